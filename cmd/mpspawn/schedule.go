package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/urfave/cli/v2"
)

// sched is what a scheduler said about the job, for the detection line and
// the dry run.
type sched struct {
	name  string            // "slurm", "PET_*" (a torchrun environment) or "" (none)
	slurm *rendezvous.Slurm // the SLURM step, when name is "slurm"
}

// applyScheduler detects a scheduler and takes from it every value that
// neither the command line nor PET_* gave (see env.go for the order). Under
// SLURM it says in one line what it found, and in a note for each flag that
// wins over SLURM's value. Several tasks on this node are refused: mpspawn
// starts the ranks itself.
func (cfg *config) applyScheduler(c *cli.Context) error {
	notes := notesWriter(c)
	s, err := rendezvous.DetectSlurm(os.Getenv)
	if err != nil {
		return slurmUsage(err)
	}
	if s == nil || cfg.rdzv.Standalone {
		if s != nil {
			fmt.Fprintf(notes, "mpspawn: note: %s: this node runs alone; SLURM's step %s (%d nodes) is not used\n", given(c, fStandalone), s.RunID(), s.NNodes)
		}
		if petSet(c) {
			cfg.sched = &sched{name: "PET_*"}
		}
		return nil
	}
	if s.TasksOnNode > 1 {
		return usagef("srun started %d tasks on this node (SLURM_STEP_TASKS_PER_NODE=%s), and mpspawn starts the ranks itself: run one per node, with srun --ntasks-per-node=1 … (inside sbatch: srun -N $SLURM_NNODES -n $SLURM_NNODES …, as a plain --ntasks-per-node=1 is ignored there when SLURM_NTASKS is inherited)",
			s.TasksOnNode, s.TasksPerNode)
	}
	cfg.sched = &sched{name: "slurm", slurm: s}
	take := func(flag, slurmVar string, slurmValue any, apply func()) {
		if !c.IsSet(flag) {
			apply()
			return
		}
		if v := fmt.Sprint(slurmValue); v != fmt.Sprint(c.Value(flag)) {
			fmt.Fprintf(notes, "mpspawn: note: %s wins over SLURM's %s (%s)\n", given(c, flag), v, slurmVar)
		}
	}
	take(fNNodes, "SLURM_STEP_NUM_NODES", s.NNodes, func() { cfg.rdzv.NNodes = s.NNodes })
	take(fRunID, "SLURM_JOB_ID.SLURM_STEP_ID", s.RunID(), func() { cfg.runID = s.RunID() })
	ranks := ""
	if !c.IsSet(fNproc) {
		if ranks, err = cfg.slurmRanks(s); err != nil {
			return err
		}
	}
	if b := c.String(fRdzvBackend); b == "etcd" || b == "c10d" {
		// The rendezvous gives the node ranks and the master.
		fmt.Fprintf(notes, "slurm: job %s step %s, %d nodes, node rank and master from the %s rendezvous%s\n",
			s.JobID, s.StepID, cfg.rdzv.NNodes, b, ranks)
		return nil
	}
	take(fNodeRank, "SLURM_NODEID", s.NodeRank, func() { cfg.rdzv.NodeRank = s.NodeRank })
	take(fMasterPort, "SLURM_JOB_ID "+s.JobID+" and SLURM_STEP_ID "+s.StepID, s.MasterPort, func() { cfg.rdzv.MasterPort = s.MasterPort })
	take(fMasterAddr, "first host of SLURM_STEP_NODELIST", s.Master(), func() { cfg.rdzv.MasterAddr = s.Master() })
	master, resolved := cfg.rdzv.MasterAddr, ""
	if !c.IsSet(fMasterAddr) {
		if resolved, err = cfg.slurmMasterAddr(c, s); err != nil {
			return err
		}
	}
	node := ""
	if s.Node != "" {
		node = " (" + s.Node + ")"
	}
	fmt.Fprintf(notes, "slurm: job %s step %s, node %d of %d%s, master %s:%d%s%s\n",
		s.JobID, s.StepID, cfg.rdzv.NodeRank, cfg.rdzv.NNodes, node, master, cfg.rdzv.MasterPort, resolved, ranks)
	return cfg.checkSlurmPort(c, s)
}

// slurmMasterAddr sets the master address to the one the other nodes reach
// SLURM's master node by (see rendezvous.Slurm.MasterAddr), and returns
// how it was found, for the detection line ("" when it is the node's name).
// A dry run goes on without one, with a warning.
func (cfg *config) slurmMasterAddr(c *cli.Context, s *rendezvous.Slurm) (string, error) {
	addr, how, err := s.MasterAddr(c.Context, net.DefaultResolver.LookupHost, scontrolNodeAddr)
	switch {
	case err != nil && !cfg.dryRun:
		return "", usagef("SLURM's master node %s has no address here: %s; give it with --master-addr", s.Master(), masterAddrReason(err))
	case err != nil:
		fmt.Fprintf(c.App.ErrWriter, "mpspawn: warning: SLURM's master node %s has no address here (%s); a launch on the nodes looks again\n", s.Master(), masterAddrReason(err))
	case addr != s.Master():
		cfg.rdzv.MasterAddr = addr
		return fmt.Sprintf(" (%s, from %s)", addr, how), nil
	}
	return "", nil
}

// slurmRanks sets the number of ranks from what SLURM gave the step on this
// node, when --nproc-per-node is not given: one per GPU (see
// visibleDevicesEnv), else one per CPU (SLURM_CPUS_ON_NODE), else 1. It
// returns the words the detection line ends with.
func (cfg *config) slurmRanks(s *rendezvous.Slurm) (string, error) {
	if v, _ := visibleDevicesEnv(); v != "" {
		cfg.nprocSpec = nprocSpec{mode: "gpu"}
		return ", one rank per GPU of the step", nil
	}
	n, why := 1, ""
	if s.CPUsOnNode > 0 {
		n, why = s.CPUsOnNode, " (SLURM_CPUS_ON_NODE)"
	}
	if err := checkCapacity(n); err != nil {
		return "", err
	}
	cfg.nprocSpec = nprocSpec{mode: "n", n: n}
	return fmt.Sprintf(", %d %s%s", n, plural(n, "rank", "ranks"), why), nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// checkSlurmPort refuses a master port derived from the job id that a
// process on this host already listens on, on the node that hosts rank 0.
func (cfg *config) checkSlurmPort(c *cli.Context, s *rendezvous.Slurm) error {
	if c.IsSet(fMasterPort) || cfg.rdzv.NodeRank != 0 || cfg.dryRun {
		return nil
	}
	if err := rendezvous.CheckPort(cfg.rdzv.MasterPort); errors.Is(err, rendezvous.ErrPortInUse) {
		return usagef("master port %d (from SLURM_JOB_ID %s) is already in use on this host, and rank 0 listens there: give another with --master-port", cfg.rdzv.MasterPort, s.JobID)
	}
	return nil
}

// visibleDevicesEnv is the GPU visibility the placement starts from:
// CUDA_VISIBLE_DEVICES when it is set (Slurm sets it for a step given
// GPUs), else SLURM_STEP_GPUS inside a step.
func visibleDevicesEnv() (value string, set bool) {
	if v, ok := os.LookupEnv("CUDA_VISIBLE_DEVICES"); ok {
		return v, true
	}
	if v := os.Getenv("SLURM_STEP_GPUS"); v != "" && os.Getenv("SLURM_STEP_ID") != "" {
		return v, true
	}
	return "", false
}

// petSet reports whether a PET_* variable gave a flag its value.
func petSet(c *cli.Context) bool {
	for _, f := range c.App.Flags {
		name := f.Names()[0]
		if _, ok := os.LookupEnv(petVar(name)); ok && c.IsSet(name) && !onCommandLine(c, name) {
			return true
		}
	}
	return false
}

// slurmUsage words a SLURM step whose variables cannot be used.
func slurmUsage(err error) error {
	var se *rendezvous.SlurmError
	var he *rendezvous.HostlistError
	switch {
	case errors.As(err, &he):
		return usagef("inside a SLURM step, %s=%q: %s %q", "SLURM_STEP_NODELIST", he.List, he.Reason, he.Item)
	case errors.As(err, &se):
		return usagef("inside a SLURM step, %s=%q %s", se.Var, se.Value, se.Reason)
	}
	return usageError{err}
}

// masterAddrReason words why the master node has no address.
func masterAddrReason(err error) string {
	var me *rendezvous.MasterAddrError
	if !errors.As(err, &me) {
		return describe(err)
	}
	return fmt.Sprintf("its name does not resolve (%s) and scontrol show node %s gave no NodeAddr (%s)",
		lookupReason(me.DNS), me.Node, nodeAddrReason(me.Slurm))
}

// lookupReason words why a host name did not resolve: "no such host".
func lookupReason(err error) string {
	var de *net.DNSError
	if errors.As(err, &de) {
		return de.Err
	}
	return describe(err)
}

// nodeAddrReason words why Slurm gave no NodeAddr for a node: what
// scontrol said, or why it did not run.
func nodeAddrReason(err error) string {
	var se *scontrolError
	var ee *exec.Error
	switch {
	case errors.As(err, &ee):
		return ee.Err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer"
	case errors.As(err, &se) && se.Stderr != "":
		lines := strings.Split(se.Stderr, "\n")
		return strings.TrimSpace(lines[len(lines)-1]) // one line: scontrol's last word
	case errors.As(err, &se):
		return describe(se.Err)
	case errors.Is(err, rendezvous.ErrNoNodeAddr):
		return "no NodeAddr in its output"
	}
	return describe(err)
}

// schedJSON is the scheduler's part of a --dry-run --json plan.
type schedJSON struct {
	Scheduler  string `json:"scheduler"` // "slurm", "PET_*" or "none"
	SlurmJob   string `json:"slurm_job,omitempty"`
	NNodes     int    `json:"nnodes"`
	NodeRank   int    `json:"node_rank"`
	MasterAddr string `json:"master_addr"`
	MasterPort int    `json:"master_port"` // 0: a free port chosen at launch (--standalone)
	RunID      string `json:"run_id"`
}

// schedPlan is what the dry run shows of the rendezvous.
func (cfg *config) schedPlan(addr string, port int) schedJSON {
	p := schedJSON{Scheduler: "none", NNodes: cfg.rdzv.NNodes, NodeRank: cfg.rdzv.NodeRank, MasterAddr: addr, MasterPort: port, RunID: cfg.runID}
	if cfg.sched != nil {
		p.Scheduler = cfg.sched.name
		if s := cfg.sched.slurm; s != nil {
			p.SlurmJob = s.RunID()
		}
	}
	return p
}

// writeSchedText is the dry run's line about the rendezvous.
func writeSchedText(w io.Writer, p schedJSON) {
	from := "flags"
	switch p.Scheduler {
	case "slurm":
		from = "slurm job " + strings.Replace(p.SlurmJob, ".", " step ", 1)
	case "PET_*":
		from = "PET_* environment"
	}
	port := strconv.Itoa(p.MasterPort)
	if p.MasterPort == 0 {
		port = "a free port"
	}
	fmt.Fprintf(w, "node %d of %d (%s), master %s:%s, run id %s\n", p.NodeRank, p.NNodes, from, p.MasterAddr, port, p.RunID)
}
