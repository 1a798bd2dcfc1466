package launcher

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/launcher/diag"
)

// RankResult is how one rank ended.
type RankResult struct {
	Rank      int
	LocalRank int
	Pid       int
	Started   time.Time
	Ended     time.Time

	// ExitCode is the rank's exit status, or -1 when it was killed by a
	// signal (see Signal) or never ran.
	ExitCode int
	// Signal is the signal that killed the rank, or 0.
	Signal syscall.Signal
	// Stopped is true when the launcher had signalled the rank (to stop it
	// after another rank's failure, on cancellation, or forwarding a signal
	// it received) before the rank exited.
	Stopped bool
	// ErrorFile holds what the rank wrote to its torchelastic error file,
	// when it wrote one.
	ErrorFile *ErrorFile
	// ErrorFilePath is where the rank was told to write it.
	ErrorFilePath string
	// Note says what the launcher could not do for the rank, when there
	// is something: "did not exit 10s after SIGKILL (state D)".
	Note string
	// Stderr holds the last lines the rank wrote to its stderr, when they
	// were kept (see Job.AddStderr and Tail): the reason a rank that wrote
	// no error file failed, such as a Python traceback.
	Stderr string
	// Cost is what the rank cost: wall and CPU time, peak memory.
	Cost Cost
	// Stack is where the rank was when the launcher stopped the job for
	// a hang or a timeout (Options.Watchdog); nil when no stack was
	// taken.
	Stack *diag.Stack
}

// Failed reports whether the rank exited non-zero or by a signal.
func (r *RankResult) Failed() bool { return r.ExitCode != 0 }

// Status describes the exit in words: "exit code 3" or "signal 15 (SIGTERM)".
func (r *RankResult) Status() string {
	if r.Signal != 0 {
		return fmt.Sprintf("signal %d (%s)", int(r.Signal), SignalName(r.Signal))
	}
	return fmt.Sprintf("exit code %d", r.ExitCode)
}

// Code is the process-style exit code: the exit status, or 128+signal.
func (r *RankResult) Code() int {
	if r.Signal != 0 {
		return 128 + int(r.Signal)
	}
	return r.ExitCode
}

// Result is how a Group ended. Ranks are ordered by rank.
type Result struct {
	Ranks []RankResult
	// RootCause indexes Ranks: the first rank seen to fail on its own, or -1.
	RootCause int
	// Failures indexes Ranks: every failed rank in the order the launcher
	// saw the exits, root cause first.
	Failures []int
	// Interrupted is the first signal the launcher forwarded to the ranks
	// (see Group.Signal), or nil.
	Interrupted os.Signal
	// Cause is why the launcher stopped the ranks, when it did: the root
	// cause's failure, the forwarded signal, or the context's cause.
	Cause error
	// Containment is how the job's descendants were contained: cgroup or
	// process-group; ContainmentNote says why cgroups were not used, when
	// they were not.
	Containment     Containment
	ContainmentNote string
	// SignalErr holds the signals the launcher could not send (other than
	// to processes already gone), joined; nil when every one was sent.
	SignalErr error
	// OutputStalled is set when the ranks' last output could not be
	// written within the drain bound (a console nobody reads) and the
	// launcher gave up on it rather than wait.
	OutputStalled bool
}

// Succeeded reports whether every rank exited 0 and nothing stopped them.
func (r *Result) Succeeded() bool {
	return r.RootCause < 0 && r.Interrupted == nil && r.Cause == nil
}

// ExitCode maps the result to the launcher's exit code: 128+signal when the
// launcher was interrupted, else the root cause's own code, else 0 (or 1
// when the ranks were stopped for another reason, such as a cancelled
// context).
func (r *Result) ExitCode() int {
	if s, ok := r.Interrupted.(syscall.Signal); ok {
		return 128 + int(s)
	}
	var te *diag.TimeoutError
	if errors.As(r.Cause, &te) {
		return diag.TimeoutExitCode
	}
	if r.RootCause >= 0 {
		return r.Ranks[r.RootCause].Code()
	}
	if r.Cause != nil {
		return 1
	}
	return 0
}

// SignalName is the conventional name of a signal, such as "SIGTERM".
func SignalName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	if n, ok := platformSignalNames[s]; ok {
		return n
	}
	return fmt.Sprintf("SIG%d", int(s))
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL: "SIGILL", syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT",
	syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE", syscall.SIGKILL: "SIGKILL",
	syscall.SIGSEGV: "SIGSEGV", syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM",
}
