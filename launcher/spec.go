package launcher

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/mpspawn/mpspawn/launcher/diag"
	"github.com/mpspawn/mpspawn/place"
)

// DefaultGracePeriod is how long stopped ranks get between SIGTERM and
// SIGKILL when Options.GracePeriod is zero; torch uses the same.
const DefaultGracePeriod = 30 * time.Second

// ErrUnsupported is returned by Start on platforms where ranks cannot be
// supervised with mpspawn's guarantees (anything but Linux).
var ErrUnsupported = errors.New("launcher: only Linux is supported")

// Spec describes one rank process.
type Spec struct {
	Rank      int // global rank; labels the rank in results
	LocalRank int // rank on this node

	Path string   // program to execute, already resolved (see exec.LookPath)
	Args []string // argv; Args[0] is the program's name
	Env  []string // the whole environment, "KEY=value"
	Dir  string   // working directory; empty means the launcher's

	// ExtraFiles become file descriptors 3, 4, ... in the rank.
	ExtraFiles []*os.File

	// CPUs, when not empty, is the set of CPUs the rank is bound to before its
	// program runs (sched_setaffinity).
	CPUs place.CPUSet

	// Stdout and Stderr receive the rank's output, one complete line per
	// Write call (see Output). Nil discards the stream.
	Stdout, Stderr io.Writer

	// ErrorFile is where the rank may write a torchelastic error file
	// (TORCHELASTIC_ERROR_FILE); it is read after the rank exits. Empty
	// means none.
	ErrorFile string

	// set by Start: the rank's cgroup (its directory, and the directory's
	// path), when the job is contained by cgroups
	cgroup     *os.File
	cgroupPath string
	// set by Start: when the rank last wrote output, and its stderr's
	// capture for a Go stack dump
	activity *atomic.Int64
	capture  *diag.Capture
}

// Containment is how the launcher makes sure that nothing a job started
// outlives it.
type Containment string

// The containments.
const (
	// ContainAuto uses cgroups where the launcher can make them, and
	// process groups otherwise.
	ContainAuto Containment = ""
	// ContainCgroup puts the job in a cgroup v2 subtree, a cgroup per rank,
	// each rank born inside its own; cgroup.kill ends every descendant at
	// once, however it left its process group or session. Start fails
	// where cgroups cannot be made (they need root, or a delegated
	// subtree such as a `systemd-run --user --scope -p Delegate=yes`
	// scope).
	ContainCgroup Containment = "cgroup"
	// ContainProcessGroup signals each rank's process group, and makes the
	// launcher a child subreaper so that descendants whose parent died are
	// re-parented to it and swept at the end, if they still carry the
	// job's mark in their environment. A daemon that both left the rank's
	// group and cleared its environment escapes.
	ContainProcessGroup Containment = "process-group"
)

// Options tune a Group.
type Options struct {
	// GracePeriod is the time between SIGTERM (or a forwarded signal) and
	// SIGKILL when ranks are stopped. Zero means DefaultGracePeriod.
	GracePeriod time.Duration

	// DrainTimeout bounds how long output is still read after every rank
	// has exited (a process outside the ranks' groups may hold their pipes).
	// Zero means one second.
	DrainTimeout time.Duration

	// KillWait bounds the wait for a rank after SIGKILL: a process in
	// uninterruptible sleep (common during GPU driver teardown) cannot be
	// reaped, and the launcher reports it (RankResult.Note) rather than
	// hang. Zero means DefaultKillWait.
	KillWait time.Duration

	// Containment is how descendants of the ranks are ended with the job;
	// ContainAuto when empty.
	Containment Containment

	// Method starts the ranks; nil means spawn. With a Forkserver every
	// rank's Path must be the server's interpreter. The method outlives
	// the Group; its owner closes it.
	Method StartMethod

	// HangTimeout, when positive, stops the ranks as a failure when none
	// of them has written any output (stdout or stderr) for that long,
	// after taking every live rank's stack (RankResult.Stack);
	// Result.Cause is then a *diag.HangError. Only output the launcher reads
	// counts: a rank whose Spec.Stdout and Spec.Stderr are nil shows none.
	HangTimeout time.Duration
	// Timeout, when positive, stops the ranks that long after they
	// started, after taking their stacks; Result.Cause is then a
	// *diag.TimeoutError and Result.ExitCode is diag.TimeoutExitCode (124).
	Timeout time.Duration
	// Stacks installs mpspawn's stack hook in Python ranks (see
	// docs/diagnosis.md), so that their stacks can be taken while they
	// run (DumpStacks). It is implied by HangTimeout and Timeout.
	Stacks bool
	// StacksDir is where the ranks' stack files go; empty means a
	// temporary directory. Start makes it; its files are removed when
	// the Group ends.
	StacksDir string
	// OnRootCause, when not nil, is called once with the root cause's
	// result the moment the first rank fails on its own, before the other
	// ranks are stopped (the job's other nodes are told from it). It runs
	// on the supervisor's goroutine and must not block.
	OnRootCause func(RankResult)
	// OnCause, when not nil, is called once with the cause the moment the
	// launcher itself decides to stop the ranks for a hang or a timeout
	// (HangTimeout, Timeout), before it takes their stacks (the job's
	// other nodes are told from it). It runs on the supervisor's goroutine
	// and must not block.
	OnCause func(error)
}

func (o Options) stacks() bool { return o.Stacks || o.HangTimeout > 0 || o.Timeout > 0 }

func (o Options) grace() time.Duration {
	if o.GracePeriod > 0 {
		return o.GracePeriod
	}
	return DefaultGracePeriod
}

// DefaultKillWait is Options.KillWait's default.
const DefaultKillWait = 10 * time.Second

func (o Options) killWait() time.Duration {
	if o.KillWait > 0 {
		return o.KillWait
	}
	return DefaultKillWait
}

func (o Options) drain() time.Duration {
	if o.DrainTimeout > 0 {
		return o.DrainTimeout
	}
	return time.Second
}

func validate(specs []Spec) error {
	if len(specs) == 0 {
		return errors.New("launcher: no ranks to start")
	}
	seen := make(map[int]bool, len(specs))
	for i, s := range specs {
		if s.Path == "" || len(s.Args) == 0 {
			return fmt.Errorf("launcher: rank %d: no program", s.Rank)
		}
		if seen[s.Rank] {
			return fmt.Errorf("launcher: spec %d: rank %d given twice", i, s.Rank)
		}
		seen[s.Rank] = true
	}
	return nil
}
