package launcher

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// The forkserver start method. Python ranks spend most of their start-up
// importing modules (torch: about 1.7 s each). A Forkserver is one Python
// process, started before any rank and before the launcher touches a GPU,
// that imports ForkserverConfig.Preload once and then forks each rank from
// itself: the rank gets its own environment, stdio, working directory, CPU
// affinity, process group and parent-death signal, and runs its script (or
// -m module) as __main__, starting with the preloaded modules already
// imported and their pages shared with the server until written.
//
// The server refuses to fork while CUDA is initialised in it (a forked
// child cannot use a CUDA context) or while it runs threads besides its own
// (a fork copies only the forking thread, so locks other threads hold stay
// held in the child); the refusal names the cause.
//
// A forked rank is the server's child, not the launcher's: the server
// reports its pid at once and its wait status when it is reaped, so the
// Group supervises it exactly as a spawned rank (first-failure stop, signal
// forwarding to its process group, grace period, error files, exit codes).
// If the server dies while ranks run, every rank it started is killed and
// the Group's Result.Cause says so.
//
// Only Python ranks can be forked: Go cannot fork without exec, and for
// programs run with exec a server brings nothing that spawn does not give
// (see docs/forkserver.md).

// ForkserverConfig says how to start a Forkserver.
type ForkserverConfig struct {
	// Python is the interpreter, already resolved (see exec.LookPath). The
	// server is run as Python -u -c SERVER; ranks must be Python command
	// lines of the same interpreter.
	Python string
	// Preload lists modules the server imports once, in order, before it
	// reports ready, as multiprocessing.set_forkserver_preload does.
	Preload []string
	// Main is the ranks' command line after the interpreter (-u SCRIPT ARGS
	// or -u -m MODULE ARGS). It sets the server's sys.path[0] while
	// preloading to what the ranks' will be, so that modules next to the
	// script can be preloaded. Optional.
	Main []string
	// Env is the server's environment; nil means the launcher's. Each rank
	// gets its own Spec.Env, but what the interpreter reads only at start
	// (PYTHONPATH, PYTHONHASHSEED, ...) comes from this one.
	Env []string
	// Dir is the server's working directory; empty means the launcher's.
	Dir string
	// Stderr receives the server's own output (what preloaded modules
	// print), one line per Write; nil means os.Stderr.
	Stderr io.Writer
	// ReadyTimeout bounds the preload: Ready fails when the server has not
	// reported ready by then. Zero means DefaultForkserverReadyTimeout.
	ReadyTimeout time.Duration
}

// DefaultForkserverReadyTimeout bounds a forkserver's preload when
// ForkserverConfig.ReadyTimeout is zero.
const DefaultForkserverReadyTimeout = 10 * time.Minute

// ErrPreload is wrapped by the error Ready returns when a preload module
// could not be imported.
var ErrPreload = errors.New("launcher: forkserver preload failed")

// ErrForkserverDied is wrapped by Result.Cause, and by start errors, when
// the forkserver exits while it is still needed. Those errors lead with it:
// "launcher: forkserver died (pid N, signal: killed); ...".
var ErrForkserverDied = errors.New("launcher: forkserver died")

// startError is the error Start returns when a start method failed to start
// rank. An error that is already the package's own (the forkserver's death,
// which concerns every rank and reads "launcher: forkserver died ...") is
// passed on as it is, so that no message says "launcher: " twice.
func startError(rank int, err error) error {
	if errors.Is(err, ErrForkserverDied) {
		return err
	}
	return &StartError{Rank: rank, Err: err}
}

// StartError is a rank that could not be started; Start returns it once the
// ranks that did start are killed and reaped.
type StartError struct {
	Rank int   // the rank (Spec.Rank)
	Err  error // why: the exec's error, or the forkserver's refusal
}

func (e *StartError) Error() string { return fmt.Sprintf("launcher: start rank %d: %v", e.Rank, e.Err) }

// Unwrap returns Err.
func (e *StartError) Unwrap() error { return e.Err }

// PreloadError is a preload module that failed to import in the server.
type PreloadError struct {
	Module string // as given in ForkserverConfig.Preload
	Err    string // the exception, "ModuleNotFoundError: No module named 'x'"
}

func (e *PreloadError) Error() string {
	return "launcher: forkserver: preload " + e.Module + ": " + e.Err
}

// Unwrap makes errors.Is(err, ErrPreload) true.
func (e *PreloadError) Unwrap() error { return ErrPreload }
