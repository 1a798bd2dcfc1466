package diag

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"
)

// StackSignal makes a Python rank that runs mpspawn's stack hook append
// the stack of every thread to its stack file (faulthandler), and go on
// running. It is a real-time signal (SIGRTMAX-3 on Linux): the launcher
// forwards SIGUSR1 and SIGUSR2 to the ranks for their own use, and sends
// StackSignal only to a process whose hook said it is registered.
const StackSignal = syscall.Signal(61)

// ErrUnsupported is returned by NewDir and DumpStacks off Linux.
var ErrUnsupported = errors.New("diag: only Linux is supported")

// Stack kinds.
const (
	StackPython = "python" // faulthandler: every thread, function and line
	StackGo     = "go"     // the runtime's SIGQUIT dump: every goroutine
)

// Stack is where a rank was when the launcher looked: the text of its
// stack, or a note saying why there is none.
type Stack struct {
	// Kind is StackPython or StackGo, or empty when no stack was taken.
	Kind string `json:"kind,omitempty"`
	// Text is the stack as the rank's runtime wrote it.
	Text string `json:"text,omitempty"`
	// Note says why there is no stack, or how it was taken.
	Note string `json:"note,omitempty"`
}

// RankStack is one rank's Stack, as DumpStacks returns it.
type RankStack struct {
	Rank  int    `json:"rank"`
	Pid   int    `json:"pid"`
	Stack *Stack `json:"stack"`
}

// HangError is Result.Cause when the launcher stopped the ranks because
// none of them wrote any output for Quiet (launcher.Options.Watchdog.HangTimeout).
type HangError struct{ Quiet time.Duration }

func (e *HangError) Error() string { return "launcher: " + e.Reason() }

// Reason is the root cause in words: "hang: no output for 5m0s".
func (e *HangError) Reason() string { return fmt.Sprintf("hang: no output for %v", e.Quiet) }

// TimeoutError is Result.Cause when the job ran for longer than
// launcher.Options.Watchdog.Timeout and the launcher stopped it; the job's exit code is
// then 124, as timeout(1)'s.
type TimeoutError struct{ Timeout time.Duration }

func (e *TimeoutError) Error() string { return "launcher: " + e.Reason() }

// Reason is the root cause in words: "timeout: the job ran for 10m0s".
func (e *TimeoutError) Reason() string { return fmt.Sprintf("timeout: the job ran for %v", e.Timeout) }

// TimeoutExitCode is the exit code of a job stopped by launcher.Options.Watchdog.Timeout.
const TimeoutExitCode = 124

// Reason is the words of a cause the launcher itself found (a hang, a
// timeout, or any error with a Reason method), or "".
func Reason(err error) string {
	var r interface{ Reason() string }
	if errors.As(err, &r) {
		return r.Reason()
	}
	return ""
}

// maxStack bounds the text kept of one rank's stack.
const maxStack = 1 << 20

// stackSignalName names StackSignal in notes: a real-time signal has no
// conventional name.
var stackSignalName = fmt.Sprintf("SIG%d", int(StackSignal))

// TrimGoStack keeps a Go rank's stderr from the runtime's "SIGQUIT: quit"
// line on: its goroutine dump.
func TrimGoStack(text string) string {
	if i := strings.Index(text, "SIGQUIT: quit"); i >= 0 {
		text = text[i:]
	}
	return strings.TrimRight(text, "\n")
}

// NoRanksError is DumpStacks' error for a process that runs no ranks.
type NoRanksError struct{ Launcher int }

func (e *NoRanksError) Error() string {
	return fmt.Sprintf("launcher: stacks: process %d runs no mpspawn ranks", e.Launcher)
}
