package launcher

import "time"

// Options tune a Group, one concern per field: how ranks are started
// (Method), how what they start ends with them (Containment), how they
// are stopped (Stop), and the watchdog and stack capture (Watchdog). The
// zero value is the default throughout.
type Options struct {
	// Method starts the ranks; nil means spawn. With a Forkserver every
	// rank's Path must be the server's interpreter. The method outlives
	// the Group; its owner closes it.
	Method StartMethod

	// Containment is how descendants of the ranks are ended with the job;
	// ContainAuto when empty.
	Containment Containment

	// Stop is how the ranks are stopped, and the job's end bounded.
	Stop StopOptions

	// Watchdog stops a job that hangs or runs too long, and sets up the
	// capture of the ranks' stacks.
	Watchdog WatchdogOptions
}

// StopOptions are how a Group stops its ranks (the first-failure policy)
// and bound each step of its end.
type StopOptions struct {
	// GracePeriod is the time between SIGTERM (or a forwarded signal) and
	// SIGKILL when ranks are stopped. Zero means DefaultGracePeriod.
	GracePeriod time.Duration

	// KillWait bounds the wait for a rank after SIGKILL: a process in
	// uninterruptible sleep (common during GPU driver teardown) cannot be
	// reaped, and the launcher reports it (RankResult.Note) rather than
	// hang. Zero means DefaultKillWait.
	KillWait time.Duration

	// DrainTimeout bounds how long output is still read after every rank
	// has exited (a process outside the ranks' groups may hold their pipes).
	// Zero means DefaultDrainTimeout.
	DrainTimeout time.Duration

	// OnRootCause, when not nil, is called once with the root cause's
	// result the moment the first rank fails on its own, before the other
	// ranks are stopped (the job's other nodes are told from it). It runs
	// on the supervisor's goroutine and must not block.
	OnRootCause func(RankResult)
}

// WatchdogOptions are the bounds on a running job, and the capture of its
// ranks' stacks (see package launcher/diag).
type WatchdogOptions struct {
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
	// run. It is implied by HangTimeout and Timeout.
	Stacks bool

	// StacksDir is where the ranks' stack files go; empty means a
	// temporary directory. Start makes it; its files are removed when
	// the Group ends.
	StacksDir string

	// OnCause, when not nil, is called once with the cause the moment the
	// launcher itself decides to stop the ranks for a hang or a timeout
	// (HangTimeout, Timeout), before it takes their stacks (the job's
	// other nodes are told from it). It runs on the supervisor's goroutine
	// and must not block.
	OnCause func(error)
}

// Defaults of the zero Options.
const (
	// DefaultGracePeriod is StopOptions.GracePeriod's default; torch uses
	// the same.
	DefaultGracePeriod = 30 * time.Second
	// DefaultKillWait is StopOptions.KillWait's default.
	DefaultKillWait = 10 * time.Second
	// DefaultDrainTimeout is StopOptions.DrainTimeout's default.
	DefaultDrainTimeout = time.Second
)

func (w WatchdogOptions) stacks() bool { return w.Stacks || w.HangTimeout > 0 || w.Timeout > 0 }

func (o StopOptions) grace() time.Duration    { return orDefault(o.GracePeriod, DefaultGracePeriod) }
func (o StopOptions) killWait() time.Duration { return orDefault(o.KillWait, DefaultKillWait) }
func (o StopOptions) drain() time.Duration    { return orDefault(o.DrainTimeout, DefaultDrainTimeout) }

// orDefault returns d, or def when d is not positive.
func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// StartMethod returns the start method the options ask for: Method, or
// spawn when it is nil.
func (o Options) StartMethod() StartMethod {
	if o.Method == nil {
		return spawnMethod{}
	}
	return o.Method
}
