package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/mpspawn/mpspawn/place"
)

// Job is one node's part of a launch: the same command started as
// NProcPerNode local ranks, each with the torchrun environment contract.
type Job struct {
	// Command is the rank program's argv; Path is Command[0] resolved.
	Path    string
	Command []string
	Dir     string
	Env     []string // base environment, usually os.Environ()

	NProcPerNode int
	NNodes       int
	NodeRank     int
	MasterAddr   string
	MasterPort   int
	RunID        string
	StartMethod  string // "spawn" or "forkserver"

	// Preload lists the modules a forkserver imports once before forking
	// the ranks, when Run starts one (StartMethod "forkserver" and no
	// Options.Forkserver).
	Preload []string

	// Ranks, when not nil, holds each local rank's placement (index =
	// local rank): extra environment (GPU visibility, OMP_NUM_THREADS for a
	// bound rank) and the CPUs it is bound to. It is filled from package
	// gpu's plan; the launcher does not interpret it.
	Ranks []place.Rank

	// LogDir is the base log directory; rank files and error files go
	// under LogDir/<run-id>/attempt_0/<local_rank>/, as torchrun lays them
	// out. When it is empty, error files go flat into ScratchDir
	// (error-<local_rank>.json), which costs less to create and remove.
	LogDir     string
	ScratchDir string
	Output     *Output

	Options Options

	// IPC gives every rank a control channel to a broker (fd 3, named by
	// MPSPAWN_CONTROL_FD), so that ranks can share buffers zero-copy and
	// use queues (package ipc; examples/python/mpspawn_ipc.py).
	IPC bool

	// Notes receives the launcher's own notices (one line each); nil
	// discards them.
	Notes io.Writer
}

// AttemptDir is the directory of this attempt's per-rank files.
func (j *Job) AttemptDir() string {
	return filepath.Join(j.LogDir, j.RunID, "attempt_0")
}

// WorldSize is the number of ranks over all nodes.
func (j *Job) WorldSize() int { return j.NNodes * j.NProcPerNode }

// RankEnv is the environment of one local rank: the base environment with
// Vars set over it.
func (j *Job) RankEnv(localRank int) []string {
	set := j.Vars(localRank)
	env := make([]string, 0, len(j.Env)+len(set))
	for _, kv := range j.Env {
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

// Vars is what the launcher sets in one local rank's environment:
// torchrun's contract, the MPSPAWN_* variables, OMP_NUM_THREADS where the
// user left it unset, and the rank's placement variables (Ranks).
func (j *Job) Vars(localRank int) map[string]string {
	rank := j.NodeRank*j.NProcPerNode + localRank
	set := map[string]string{
		"LOCAL_RANK":                 strconv.Itoa(localRank),
		"RANK":                       strconv.Itoa(rank),
		"GROUP_RANK":                 strconv.Itoa(j.NodeRank),
		"ROLE_RANK":                  strconv.Itoa(rank),
		"ROLE_NAME":                  "default",
		"LOCAL_WORLD_SIZE":           strconv.Itoa(j.NProcPerNode),
		"WORLD_SIZE":                 strconv.Itoa(j.WorldSize()),
		"GROUP_WORLD_SIZE":           strconv.Itoa(j.NNodes),
		"ROLE_WORLD_SIZE":            strconv.Itoa(j.WorldSize()),
		"MASTER_ADDR":                j.MasterAddr,
		"MASTER_PORT":                strconv.Itoa(j.MasterPort),
		"TORCHELASTIC_RUN_ID":        j.RunID,
		"TORCHELASTIC_RESTART_COUNT": "0",
		"TORCHELASTIC_MAX_RESTARTS":  "0",
		"TORCHELASTIC_ERROR_FILE":    j.ErrorFile(localRank),
		"MPSPAWN_START_METHOD":       j.StartMethod,
		"MPSPAWN_LAUNCHER_PID":       strconv.Itoa(os.Getpid()),
		"MPSPAWN_NODE_RANK":          strconv.Itoa(j.NodeRank),
	}
	if j.LogDir != "" {
		set["MPSPAWN_LOG_DIR"] = filepath.Join(j.AttemptDir(), strconv.Itoa(localRank))
	}
	userOMP := j.userSet("OMP_NUM_THREADS")
	if j.ompDefault() {
		set["OMP_NUM_THREADS"] = "1"
	}
	if localRank < len(j.Ranks) {
		for k, v := range j.Ranks[localRank].Env {
			if k == "OMP_NUM_THREADS" && userOMP {
				continue
			}
			set[k] = v
		}
	}
	return set
}

// ompDefault reports whether OMP_NUM_THREADS is set to 1 for the ranks:
// when it is unset and more than one rank shares the node, as torchrun does.
func (j *Job) ompDefault() bool {
	return j.NProcPerNode > 1 && !j.userSet("OMP_NUM_THREADS")
}

// boundOMP lists the OMP_NUM_THREADS values the placement gives the ranks
// ("4,4,4,4"), or returns "" when the user set the variable or no rank is
// bound.
func (j *Job) boundOMP() string {
	if j.userSet("OMP_NUM_THREADS") {
		return ""
	}
	vals := make([]string, j.NProcPerNode)
	bound := false
	for lr := range vals {
		vals[lr] = "1"
		if lr < len(j.Ranks) && j.Ranks[lr].Env["OMP_NUM_THREADS"] != "" {
			vals[lr], bound = j.Ranks[lr].Env["OMP_NUM_THREADS"], true
		}
	}
	if !bound {
		return ""
	}
	return strings.Join(vals, ",")
}

// userSet reports whether the base environment sets key.
func (j *Job) userSet(key string) bool {
	for _, kv := range j.Env {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

// ErrorFile is where a local rank is told to write its torchelastic error
// file (TORCHELASTIC_ERROR_FILE).
func (j *Job) ErrorFile(localRank int) string {
	if j.LogDir == "" {
		return filepath.Join(j.ScratchDir, "error-"+strconv.Itoa(localRank)+".json")
	}
	return filepath.Join(j.AttemptDir(), strconv.Itoa(localRank), "error.json")
}

// Specs builds the rank specs, creating each rank's directory under the
// attempt directory and removing error files left by an earlier run.
func (j *Job) Specs() ([]Spec, error) {
	if j.Output == nil {
		j.Output = &Output{}
	}
	j.Output.Dir = j.AttemptDir()
	j.Output.RoleName = "default"
	specs := make([]Spec, j.NProcPerNode)
	for lr := range specs {
		ef := j.ErrorFile(lr)
		if j.LogDir != "" {
			if err := os.MkdirAll(filepath.Dir(ef), 0o755); err != nil {
				return nil, fmt.Errorf("launcher: log dir: %w", err)
			}
		}
		if err := os.Remove(ef); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("launcher: stale error file: %w", err)
		}
		rank := j.NodeRank*j.NProcPerNode + lr
		stdout, stderr, err := j.Output.Open(rank, lr)
		if err != nil {
			return nil, err
		}
		specs[lr] = Spec{
			Rank: rank, LocalRank: lr,
			Path: j.Path, Args: j.Command, Env: j.RankEnv(lr), Dir: j.Dir,
			Stdout: stdout, Stderr: stderr, ErrorFile: ef,
		}
		if lr < len(j.Ranks) {
			specs[lr].CPUs = j.Ranks[lr].CPUs
		}
	}
	return specs, nil
}

// Run starts the job, forwards the launcher's signals to the ranks (see
// ForwardedSignals) and waits for every rank. The error is about starting
// the job; how the ranks ended is in the Result.
func (j *Job) Run(ctx context.Context) (*Result, error) {
	opts := j.Options
	if j.StartMethod == "forkserver" && opts.Forkserver == nil {
		fs, err := StartForkserver(ForkserverConfig{Python: j.Path, Preload: j.Preload, Main: j.Command[1:], Env: j.Env, Dir: j.Dir, Stderr: j.Notes})
		if err != nil {
			return nil, err
		}
		defer fs.Close()
		opts.Forkserver = fs
	}
	if fs := opts.Forkserver; fs != nil {
		// Before signals are caught: a signal during the preload ends the
		// launcher with its default action, and the server with it (its
		// parent-death signal and the guard), as it would before a spawn.
		if err := fs.Ready(ctx); err != nil {
			return nil, err
		}
	}
	switch bound := j.boundOMP(); {
	case bound != "":
		j.note("note: OMP_NUM_THREADS is not set; setting it for each rank to its share of the CPUs it is bound to (%s) (set it yourself to tune)", bound)
	case j.ompDefault():
		j.note("note: OMP_NUM_THREADS is not set; setting it to 1 for each of the %d ranks so they do not oversubscribe the CPUs (set it yourself to tune)", j.NProcPerNode)
	}
	// Catch signals before any rank starts so that none is lost. SIGPIPE is
	// caught (not ignored, which ranks would inherit) so that a closed
	// console does not kill the launcher.
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, append(ForwardedSignals, syscall.SIGPIPE)...)
	defer signal.Stop(sigc)

	specs, err := j.Specs()
	if err != nil {
		return nil, err
	}
	defer j.Output.Close()
	var jc *jobControl
	if j.IPC {
		if jc, err = addControl(specs); err != nil {
			return nil, err
		}
	}
	g, err := Start(ctx, specs, opts)
	if err != nil {
		if jc != nil {
			jc.close()
		}
		return nil, err
	}
	if jc != nil {
		jc.serve(g)
		defer func() {
			for _, leak := range jc.finish() {
				j.note("warning: %s", leak)
			}
		}()
	}
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		for {
			select {
			case sig := <-sigc:
				if sig != syscall.SIGPIPE {
					g.Signal(sig)
				}
			case <-g.done:
				return
			}
		}
	}()
	res := g.Wait()
	<-forwarded
	return res, nil
}

func (j *Job) note(format string, args ...any) {
	if j.Notes != nil {
		fmt.Fprintf(j.Notes, "mpspawn: "+format+"\n", args...)
	}
}
