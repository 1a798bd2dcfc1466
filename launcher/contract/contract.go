package contract

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/mpspawn/mpspawn/place"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// Contract is the rank contract of one node's part of a job: what every
// rank is told through its environment. It is built here only, from a
// rendezvous membership and each rank's placement, for the CLI's ranks,
// the Go API's ranks and Pool workers, and the dry run; a rank reads it
// back with ReadRankEnv.
//
// The variables are torchrun's (RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, GROUP_RANK, GROUP_WORLD_SIZE, ROLE_*, MASTER_ADDR,
// MASTER_PORT, TORCHELASTIC_*), so that training scripts run unchanged,
// plus mpspawn's own MPSPAWN_*.
type Contract struct {
	rendezvous.Membership

	RunID        string // TORCHELASTIC_RUN_ID; empty leaves it unset
	Role         string // ROLE_NAME; empty means DefaultRole
	StartMethod  string // MPSPAWN_START_METHOD: "spawn" or "forkserver"
	RestartCount int    // TORCHELASTIC_RESTART_COUNT
	MaxRestarts  int    // TORCHELASTIC_MAX_RESTARTS

	// ErrorFile, when not nil, is where a local rank writes its torchelastic
	// error file (TORCHELASTIC_ERROR_FILE).
	ErrorFile func(localRank int) string
	// LogDir, when not nil, is a local rank's log directory
	// (MPSPAWN_LOG_DIR).
	LogDir func(localRank int) string

	// Base is the environment the variables are set over, usually
	// os.Environ(). A variable the user set in it is kept where the
	// contract only suggests a value (OMP_NUM_THREADS).
	Base []string
}

// Vars is what the launcher sets in local rank localRank's environment:
// the contract, OMP_NUM_THREADS where the user left it unset and ranks
// share the node, and the rank's placement p (its variables, and
// MPSPAWN_CPUS for its CPUs).
func (c *Contract) Vars(localRank int, p place.Rank) map[string]string {
	rank := c.Rank(localRank)
	set := map[string]string{
		"LOCAL_RANK":                 strconv.Itoa(localRank),
		"RANK":                       strconv.Itoa(rank),
		"GROUP_RANK":                 strconv.Itoa(c.NodeRank),
		"ROLE_RANK":                  strconv.Itoa(rank),
		"ROLE_NAME":                  c.RoleName(),
		"LOCAL_WORLD_SIZE":           strconv.Itoa(c.NProcPerNode),
		"WORLD_SIZE":                 strconv.Itoa(c.WorldSize),
		"GROUP_WORLD_SIZE":           strconv.Itoa(c.NNodes),
		"ROLE_WORLD_SIZE":            strconv.Itoa(c.WorldSize),
		"TORCHELASTIC_RESTART_COUNT": strconv.Itoa(c.RestartCount),
		"TORCHELASTIC_MAX_RESTARTS":  strconv.Itoa(c.MaxRestarts),
		"MPSPAWN_START_METHOD":       c.StartMethod,
		"MPSPAWN_LAUNCHER_PID":       strconv.Itoa(os.Getpid()),
		"MPSPAWN_NODE_RANK":          strconv.Itoa(c.NodeRank),
		// No launcher-hosted store: rank 0's TCPStore at MASTER_PORT is
		// the job's store, as with torchrun's etcd and c10d backends.
		"TORCHELASTIC_USE_AGENT_STORE": "False",
	}
	if !c.UserSet("TORCH_NCCL_ASYNC_ERROR_HANDLING") && !c.UserSet("NCCL_ASYNC_ERROR_HANDLING") {
		// As torchrun: on GPUs an NCCL hang becomes an error the rank
		// fails with, which the launcher then sees.
		set["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
	}
	if c.MasterAddr != "" {
		set["MASTER_ADDR"] = c.MasterAddr
		set["MASTER_PORT"] = strconv.Itoa(c.MasterPort)
	}
	if c.RunID != "" {
		set["TORCHELASTIC_RUN_ID"] = c.RunID
	}
	if c.ErrorFile != nil {
		set["TORCHELASTIC_ERROR_FILE"] = c.ErrorFile(localRank)
	}
	if c.LogDir != nil {
		set["MPSPAWN_LOG_DIR"] = c.LogDir(localRank)
	}
	userOMP := c.UserSet("OMP_NUM_THREADS")
	if c.OMPDefault() {
		set["OMP_NUM_THREADS"] = "1"
	}
	for k, v := range p.Env {
		if k == "OMP_NUM_THREADS" && userOMP {
			continue
		}
		set[k] = v
	}
	if p.CPUs.Len() > 0 {
		set["MPSPAWN_CPUS"] = p.CPUs.String()
	}
	return set
}

// Env is local rank localRank's whole environment: Base with Vars set
// over it.
func (c *Contract) Env(localRank int, p place.Rank) []string {
	set := c.Vars(localRank, p)
	env := make([]string, 0, len(c.Base)+len(set))
	for _, kv := range c.Base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := set[k]; !ok {
			env = append(env, kv)
		}
	}
	for k, v := range set {
		env = append(env, k+"="+v)
	}
	return env
}

// OMPDefault reports whether OMP_NUM_THREADS is set to 1 for the ranks:
// when it is unset and more than one rank shares the node, as torchrun does.
func (c *Contract) OMPDefault() bool {
	return c.NProcPerNode > 1 && !c.UserSet("OMP_NUM_THREADS")
}

// UserSet reports whether Base sets key.
func (c *Contract) UserSet(key string) bool {
	for _, kv := range c.Base {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

// RankEnv is the rank contract as a rank reads it from its environment.
type RankEnv struct {
	Rank           int // RANK
	LocalRank      int // LOCAL_RANK
	WorldSize      int // WORLD_SIZE
	LocalWorldSize int // LOCAL_WORLD_SIZE
	NodeRank       int // GROUP_RANK
	RestartCount   int // TORCHELASTIC_RESTART_COUNT
	RunID          string
	MasterAddr     string
	MasterPort     int
	// GPUs holds the UUIDs of the rank's GPUs when a placement gave it some
	// (MPSPAWN_GPUS); CUDA_VISIBLE_DEVICES is set to match.
	GPUs []string
	// CPUs is the CPUs the rank is bound to (MPSPAWN_CPUS), or nil.
	CPUs place.CPUSet
}

// ReadRankEnv reads the rank contract from the environment through
// getenv (os.Getenv in a rank). A variable that is missing reads as its
// zero value; one that is set but malformed is an error.
func ReadRankEnv(getenv func(string) string) (RankEnv, error) {
	var r RankEnv
	ints := []struct {
		key string
		dst *int
	}{
		{"RANK", &r.Rank}, {"LOCAL_RANK", &r.LocalRank}, {"WORLD_SIZE", &r.WorldSize},
		{"LOCAL_WORLD_SIZE", &r.LocalWorldSize}, {"GROUP_RANK", &r.NodeRank},
		{"TORCHELASTIC_RESTART_COUNT", &r.RestartCount}, {"MASTER_PORT", &r.MasterPort},
	}
	for _, v := range ints {
		s := getenv(v.key)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return RankEnv{}, fmt.Errorf("contract: %s=%q: not a number", v.key, s)
		}
		*v.dst = n
	}
	r.RunID, r.MasterAddr = getenv("TORCHELASTIC_RUN_ID"), getenv("MASTER_ADDR")
	if g := getenv("MPSPAWN_GPUS"); g != "" {
		r.GPUs = strings.Split(g, ",")
	}
	if s := getenv("MPSPAWN_CPUS"); s != "" {
		cpus, err := place.ParseCPUList(s)
		if err != nil {
			return RankEnv{}, fmt.Errorf("contract: MPSPAWN_CPUS: %w", err)
		}
		r.CPUs = cpus
	}
	return r, nil
}

// DefaultRole is the ranks' ROLE_NAME unless a Contract or Job says.
const DefaultRole = "default"

// RoleName is the ranks' ROLE_NAME: Role, or DefaultRole.
func (c *Contract) RoleName() string {
	if c.Role == "" {
		return DefaultRole
	}
	return c.Role
}
