package rendezvous

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SlurmPortBase is the lowest master port DetectSlurm derives: a step's
// port is SlurmPortBase + (job id + step id) mod SlurmPortSpan, below
// Linux's ephemeral ports (32768 and up), so every node of the step agrees
// on it without talking, and steps that run at once in one job differ.
const (
	SlurmPortBase = 15000
	SlurmPortSpan = 10000
)

// Slurm is what Slurm says about this node's part of a job step, read from
// the environment srun gives each task. It is a plain value.
type Slurm struct {
	JobID, StepID string
	NNodes        int      // SLURM_STEP_NUM_NODES
	NodeRank      int      // SLURM_NODEID
	Node          string   // this node's name, SLURMD_NODENAME ("" when unset)
	Nodes         []string // SLURM_STEP_NODELIST, expanded
	MasterPort    int      // derived from the job and step ids
	// TasksOnNode is how many tasks srun started on this node
	// (SLURM_STEP_TASKS_PER_NODE at NodeRank); TasksPerNode is the
	// variable as Slurm wrote it, for messages.
	TasksOnNode  int
	TasksPerNode string
	GPUs         string // SLURM_STEP_GPUS: the GPUs given to the step ("" when none)
	CPUsOnNode   int    // SLURM_CPUS_ON_NODE (0 when unset)
	// NodeAliases is SLURM_NODE_ALIASES (name:addr:host,...), set for
	// nodes whose names do not resolve (cloud nodes).
	NodeAliases string
}

// RunID is the job's run id: "<job>.<step>".
func (s *Slurm) RunID() string { return s.JobID + "." + s.StepID }

// Master is the first node of the step, which hosts rank 0.
func (s *Slurm) Master() string { return s.Nodes[0] }

// SlurmError is a Slurm variable that DetectSlurm cannot use.
type SlurmError struct {
	Var, Value string
	Reason     string
	Err        error // the underlying error, a *HostlistError for a node list; may be nil
}

func (e *SlurmError) Error() string {
	msg := fmt.Sprintf("rendezvous: slurm: %s=%q %s", e.Var, e.Value, e.Reason)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *SlurmError) Unwrap() error { return e.Err }

// DetectSlurm reads a Slurm job step from getenv (os.Getenv, or a test's
// map). Outside a step (SLURM_JOB_ID or SLURM_STEP_ID unset: a login node,
// an sbatch script, an salloc shell) it returns nil, nil. A step whose
// variables do not make sense gives a *SlurmError.
func DetectSlurm(getenv func(string) string) (*Slurm, error) {
	s := &Slurm{JobID: getenv("SLURM_JOB_ID"), StepID: getenv("SLURM_STEP_ID")}
	if s.JobID == "" || s.StepID == "" {
		return nil, nil
	}
	num := func(name string, min int) (int, error) {
		v := getenv(name)
		n, err := strconv.Atoi(v)
		if err != nil || n < min {
			return 0, &SlurmError{Var: name, Value: v, Reason: fmt.Sprintf("is not a number of at least %d", min)}
		}
		return n, nil
	}
	job, err := num("SLURM_JOB_ID", 0)
	if err != nil {
		return nil, err
	}
	step, err := strconv.Atoi(s.StepID)
	if err != nil || step < 0 {
		// Slurm numbers the steps srun starts; "batch" and "extern" are
		// no place for a launcher.
		return nil, &SlurmError{Var: "SLURM_STEP_ID", Value: s.StepID, Reason: "is not an srun step's number"}
	}
	s.MasterPort = SlurmPortBase + (job+step)%SlurmPortSpan
	if s.NNodes, err = num("SLURM_STEP_NUM_NODES", 1); err != nil {
		return nil, err
	}
	if s.NodeRank, err = num("SLURM_NODEID", 0); err != nil {
		return nil, err
	}
	if s.NodeRank >= s.NNodes {
		return nil, &SlurmError{Var: "SLURM_NODEID", Value: getenv("SLURM_NODEID"),
			Reason: fmt.Sprintf("is not below SLURM_STEP_NUM_NODES=%d", s.NNodes)}
	}
	list := getenv("SLURM_STEP_NODELIST")
	if s.Nodes, err = ExpandHostlist(list); err != nil {
		return nil, &SlurmError{Var: "SLURM_STEP_NODELIST", Value: list, Reason: "is not a node list", Err: err}
	}
	if len(s.Nodes) != s.NNodes {
		return nil, &SlurmError{Var: "SLURM_STEP_NODELIST", Value: list,
			Reason: fmt.Sprintf("names %d nodes, not SLURM_STEP_NUM_NODES=%d", len(s.Nodes), s.NNodes)}
	}
	s.TasksPerNode = getenv("SLURM_STEP_TASKS_PER_NODE")
	tasks, err := expandTasksPerNode(s.TasksPerNode)
	if err != nil || len(tasks) != s.NNodes {
		return nil, &SlurmError{Var: "SLURM_STEP_TASKS_PER_NODE", Value: s.TasksPerNode,
			Reason: fmt.Sprintf("is not a task count for each of the %d nodes (such as 1(x%d))", s.NNodes, s.NNodes)}
	}
	s.TasksOnNode = tasks[s.NodeRank]
	s.Node, s.GPUs, s.NodeAliases = getenv("SLURMD_NODENAME"), getenv("SLURM_STEP_GPUS"), getenv("SLURM_NODE_ALIASES")
	if v := getenv("SLURM_CPUS_ON_NODE"); v != "" {
		if s.CPUsOnNode, err = num("SLURM_CPUS_ON_NODE", 1); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// expandTasksPerNode expands Slurm's compressed task counts: "2(x3),1" is
// 2, 2, 2, 1.
func expandTasksPerNode(v string) ([]int, error) {
	var out []int
	for _, item := range strings.Split(v, ",") {
		count, times := item, "1"
		if c, rest, ok := strings.Cut(item, "(x"); ok {
			var closed bool
			count, closed = c, strings.HasSuffix(rest, ")")
			if times = strings.TrimSuffix(rest, ")"); !closed {
				return nil, fmt.Errorf("bad item %q", item)
			}
		}
		n, err1 := strconv.Atoi(count)
		k, err2 := strconv.Atoi(times)
		if err := errors.Join(err1, err2); err != nil || n < 0 || k < 1 || k > MaxHosts-len(out) {
			return nil, fmt.Errorf("bad item %q", item)
		}
		for range k {
			out = append(out, n)
		}
	}
	return out, nil
}

// MasterAddr finds the address the other nodes reach the master node by,
// and says how it found it. In order: the node's entry in
// SLURM_NODE_ALIASES; the node's name itself when it resolves here (DNS or
// /etc/hosts), as on most clusters; else the NodeAddr that Slurm has for
// it, which is how slurmctld reaches the node. Asking Slurm comes last
// because every node of every step would ask slurmctld at once. Each
// lookup is bounded by ctx and a few seconds.
//
// The package runs no program and links no resolver: lookupHost resolves a
// name, normally net.DefaultResolver.LookupHost (so that a Go API program,
// which links this package through the launcher, stays statically linked),
// and nodeAddr asks Slurm for a node's NodeAddr, normally by running
// `scontrol --oneliner show node NODE` and reading its output with
// ParseNodeAddr.
func (s *Slurm) MasterAddr(ctx context.Context, lookupHost func(context.Context, string) ([]string, error),
	nodeAddr func(context.Context, string) (string, error)) (addr, how string, err error) {
	name := s.Master()
	for _, alias := range strings.Split(s.NodeAliases, ",") {
		// name:addr:host, where addr may be a bracketed IPv6 address.
		if n, rest, ok := strings.Cut(alias, ":"); ok && n == name {
			if i := strings.LastIndexByte(rest, ':'); i > 0 {
				return strings.Trim(rest[:i], "[]"), "SLURM_NODE_ALIASES", nil
			}
		}
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, dnsErr := lookupHost(lctx, name)
	if dnsErr == nil {
		return name, "the node's name", nil
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addr, err = nodeAddr(sctx, name)
	if err != nil {
		return "", "", &MasterAddrError{Node: name, DNS: dnsErr, Slurm: err}
	}
	return addr, "scontrol show node " + name, nil
}

// MasterAddrError is a master node that MasterAddr cannot find an address
// for: its name does not resolve (DNS) and Slurm gave none (Slurm).
type MasterAddrError struct {
	Node       string
	DNS, Slurm error
}

func (e *MasterAddrError) Error() string {
	return fmt.Sprintf("rendezvous: slurm: master node %s: %v; scontrol show node: %v", e.Node, e.DNS, e.Slurm)
}

// Unwrap returns both reasons.
func (e *MasterAddrError) Unwrap() []error { return []error{e.DNS, e.Slurm} }

// ErrNoNodeAddr is ParseNodeAddr's error when Slurm's description of a
// node has no NodeAddr.
var ErrNoNodeAddr = errors.New("rendezvous: slurm: no NodeAddr in the node's description")

// ParseNodeAddr reads a node's NodeAddr from Slurm's description of it, the
// output of `scontrol --oneliner show node NODE`.
func ParseNodeAddr(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		for _, field := range strings.Fields(sc.Text()) {
			if v, ok := strings.CutPrefix(field, "NodeAddr="); ok && v != "" {
				return v, nil
			}
		}
	}
	return "", ErrNoNodeAddr
}
