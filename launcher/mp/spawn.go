package mp

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/internal/codec"
	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/launcher/contract"
	"github.com/mpspawn/mpspawn/place"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// DefaultGracePeriod is the time between SIGTERM and SIGKILL for Go ranks
// when Options.GracePeriod is zero.
const DefaultGracePeriod = 5 * time.Second

// self is the binary ranks run: this process's own executable, even if the
// file it was started from has since been replaced or removed.
const self = "/proc/self/exe"

// Options tune Spawn and NewPool. The zero value is usable.
type Options struct {
	// Env is added to every rank's environment, over the parent's.
	Env []string
	// Ranks, when not nil, is each rank's placement by index (extra
	// environment, CPU binding), for example gpu.PlanHere's result, as the
	// CLI does.
	Ranks []place.Rank
	// GracePeriod is the time between SIGTERM and SIGKILL when ranks are
	// stopped; zero means DefaultGracePeriod.
	GracePeriod time.Duration
	// Stdout and Stderr receive the ranks' output, a whole line per
	// write; nil means the parent's os.Stdout and os.Stderr.
	Stdout, Stderr io.Writer
	// Prefix is the console line prefix template, as for the CLI
	// ("[${rank}]: "); empty means none.
	Prefix string
	// Broker routes buffers, handles and queues between the ranks (see
	// package ipc). Nil means Spawn makes its own and closes it after
	// Join, reporting leaked handles on Stderr. Pass one to publish
	// buffers from the launcher before the ranks start (the caller then
	// closes it).
	Broker *ipc.Broker
}

func (o *Options) grace() time.Duration {
	if o.GracePeriod > 0 {
		return o.GracePeriod
	}
	return DefaultGracePeriod
}

func (o *Options) stderr() io.Writer {
	if o.Stderr != nil {
		return o.Stderr
	}
	return os.Stderr
}

// RankError is the failure of one rank (or of one Pool task): the typed
// counterpart of torch's ProcessRaisedException and ProcessExitedException.
// Use errors.As to get it from Join, Map or Get.
type RankError struct {
	// Rank is the failing rank (for a Pool task, the worker).
	Rank int
	// Pid is the rank's process id.
	Pid int
	// Message is the error the function returned, "panic: <value>" for a
	// panic, or how the rank ended when it died without reporting.
	Message string
	// Panicked is true when the function panicked; PanicValue is the value
	// it panicked with, formatted with %v.
	Panicked   bool
	PanicValue string
	// Stack is the rank's own stack: for a panic, the panicking
	// goroutine's, naming the line that panicked; for a returned error, the
	// error's own stack if it formats one with %+v, else "returned by" and
	// the function's name and where it is defined; for a Go runtime crash,
	// the traceback it printed.
	Stack string
	// ExitCode and Signal are how the rank process ended (-1 and the signal
	// when a signal killed it); zero for a Pool task that failed in a
	// worker that lives on.
	ExitCode int
	Signal   syscall.Signal
	// Stderr holds the last lines the rank wrote to stderr: where the Go
	// runtime prints a fatal error's traceback.
	Stderr string
	// Err is the sentinel for the failure, when there is one
	// (ErrWorkerDied); errors.Is sees it through the RankError.
	Err error
}

// Unwrap returns Err.
func (e *RankError) Unwrap() error { return e.Err }

// Error describes the failure on one line; the stack is in Stack.
func (e *RankError) Error() string {
	return fmt.Sprintf("mp: rank %d (pid %d) failed: %s", e.Rank, e.Pid, e.Message)
}

// Exit describes how the rank process ended: "exit code 3", "signal 9
// (SIGKILL)", or "" when it did not (a Pool task that failed in a worker
// that lives on).
func (e *RankError) Exit() string {
	switch {
	case e.Signal != 0:
		return fmt.Sprintf("signal %d (%s)", int(e.Signal), launcher.SignalName(e.Signal))
	case e.ExitCode != 0:
		return fmt.Sprintf("exit code %d", e.ExitCode)
	}
	return ""
}

// Spawned is a running Spawn. Its methods may be called from several
// goroutines; Join and Wait return the same outcome every time.
type Spawned[R any] struct {
	group  *launcher.Group
	ranks  *goRanks
	broker *ipc.Broker
	ownBrk bool
	stderr io.Writer

	results []R
	gotRes  []bool
	remote  []*remoteError

	once sync.Once
	err  error
}

// Spawn starts nprocs processes of this binary, each running fn(ctx, rank,
// args), and returns at once; Join waits for them. The processes are
// started and supervised by the same code as the CLI's ranks: the first
// failure (a returned error, a panic, a non-zero exit, a signal) stops the
// others (SIGTERM, then SIGKILL after the grace period), cancelling ctx
// stops them all, and none outlives the parent, even a parent killed with
// SIGKILL. The binary must call Main first thing in main; called in a rank
// that did not, Spawn returns ErrInsideRank.
func Spawn[A, R any](ctx context.Context, fn Func[A, R], nprocs int, args A, opts *Options) (*Spawned[R], error) {
	if opts == nil {
		opts = &Options{}
	}
	payload, err := spawnPayload(fn, nprocs, args)
	if err != nil {
		return nil, err
	}
	s := &Spawned[R]{
		results: make([]R, nprocs), gotRes: make([]bool, nprocs), remote: make([]*remoteError, nprocs),
		broker: opts.Broker, ownBrk: opts.Broker == nil, stderr: opts.stderr(),
	}
	if s.ownBrk {
		s.broker = ipc.NewBroker()
	}
	output := &launcher.Output{Stdout: opts.Stdout, Stderr: opts.Stderr, Prefix: opts.Prefix}
	s.ranks, err = newGoRanks(roleRank, 0, nprocs, nprocs, opts, output, s.broker)
	if err != nil {
		return nil, fmt.Errorf("mp: spawn %s: %w", fn.name, err)
	}
	s.group, err = launcher.Start(ctx, s.ranks.specs, launcher.Options{Stop: launcher.StopOptions{GracePeriod: opts.grace()}})
	if err != nil {
		s.ranks.close()
		return nil, fmt.Errorf("mp: spawn %s: %w", fn.name, err)
	}
	s.ranks.chans.Serve(s.group, s.deliver)
	for i := range nprocs {
		if err := s.ranks.chans.Conn(i).WriteFrame(ipc.Frame{Type: ipc.FrameArgs, Payload: payload}); err != nil {
			// The rank died first; its exit says why.
			continue
		}
	}
	return s, nil
}

// spawnPayload checks Spawn's arguments and encodes the ranks' call.
func spawnPayload[A, R any](fn Func[A, R], nprocs int, args A) ([]byte, error) {
	switch {
	case insideRank():
		return nil, ErrInsideRank
	case nprocs < 1:
		return nil, fmt.Errorf("mp: spawn %s: %d ranks: want at least 1", fn.name, nprocs)
	}
	if _, ok := lookup(fn.name); !ok {
		return nil, fmt.Errorf("mp: spawn: function %q is not registered", fn.name)
	}
	in, err := codec.Encode(args)
	if err != nil {
		return nil, fmt.Errorf("mp: spawn %s: encode args: %w", fn.name, err)
	}
	return codec.Encode(callMsg{Func: fn.name, Args: in})
}

// deliver takes what rank i reports: its result, or its error.
func (s *Spawned[R]) deliver(i int, f ipc.Frame) error {
	closeAll(f.Files)
	switch f.Type {
	case ipc.FrameResult:
		if err := codec.Decode(f.Payload, &s.results[i]); err != nil {
			return fmt.Errorf("mp: rank %d: decode result: %w", i, err)
		}
		s.gotRes[i] = true
	case ipc.FrameError:
		var re remoteError
		if err := codec.Decode(f.Payload, &re); err != nil {
			return fmt.Errorf("mp: rank %d: decode error: %w", i, err)
		}
		s.remote[i] = &re
	default:
		return fmt.Errorf("mp: rank %d: unexpected %v frame", i, f.Type)
	}
	return nil
}

// Join waits for every rank to exit and returns their results ordered by
// rank, or the root cause's *RankError (the rank's own error message, panic
// value and stack), or why the ranks were stopped (context.Cause of a
// cancelled ctx).
func (s *Spawned[R]) Join() ([]R, error) {
	s.once.Do(s.join)
	if s.err != nil {
		return nil, s.err
	}
	return s.results, nil
}

// Wait is Join without the results.
func (s *Spawned[R]) Wait() error {
	_, err := s.Join()
	return err
}

// Pids returns the ranks' process ids, ordered by rank.
func (s *Spawned[R]) Pids() []int { return s.group.Pids() }

// Stop stops every rank, recording cause; Join then returns it.
func (s *Spawned[R]) Stop(cause error) { s.group.Stop(cause) }

func (s *Spawned[R]) join() {
	res := s.group.Wait()
	s.ranks.close()
	s.ranks.output.Close()
	if s.ownBrk {
		for _, leak := range s.broker.Close() {
			fmt.Fprintf(s.stderr, "mpspawn: warning: %s\n", leak)
		}
	}
	s.err = s.outcome(res)
}

// outcome turns the group's result into Join's error.
func (s *Spawned[R]) outcome(res *launcher.Result) error {
	if res.RootCause >= 0 {
		return s.rankError(res.RootCause, res)
	}
	if res.Cause != nil {
		return fmt.Errorf("mp: ranks stopped: %w", res.Cause)
	}
	for i := range s.results {
		if !s.gotRes[i] {
			return &RankError{Rank: i, Pid: res.Ranks[i].Pid, Message: noResult, Stderr: s.ranks.tails[i].String()}
		}
	}
	return nil
}

// noResult is the message of a rank that exited 0 without reporting:
// almost always a binary whose main does not start with Main, so that the
// rank ran main itself.
const noResult = "exited 0 without reporting a result: does main call mp.Main() first thing, before any other work?"

func (s *Spawned[R]) rankError(i int, res *launcher.Result) *RankError {
	rr := res.Ranks[i]
	e := &RankError{Rank: rr.Rank, Pid: rr.Pid, ExitCode: rr.ExitCode, Signal: rr.Signal, Message: rr.Status(), Stderr: s.ranks.tails[i].String()}
	switch re := s.remote[i]; {
	case re != nil:
		e.Message, e.Panicked, e.PanicValue, e.Stack = re.Message, re.Panicked, re.Panic, re.Stack
	case strings.Contains(e.Stderr, "goroutine "):
		e.Stack = e.Stderr // a Go fatal error or signal traceback
	case e.Stderr != "":
		// It died without reporting: what it said last is the best clue
		// (a binary that does not call Main says so there).
		e.Message += ": " + lastLine(e.Stderr)
	}
	return e
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// goRanks are Go ranks or Pool workers being started: their specs, their
// control channels and the tails of their stderr.
type goRanks struct {
	specs  []launcher.Spec
	chans  *launcher.Channels
	tails  []*launcher.Tail
	output *launcher.Output
}

// newGoRanks prepares ranks first .. first+n-1 of world that run this
// binary in role, with control channels to broker, writing their output to
// out. opts.Ranks is indexed by rank.
func newGoRanks(role string, first, n, world int, opts *Options, out *launcher.Output, broker *ipc.Broker) (*goRanks, error) {
	rc := &contract.Contract{ // the ranks' contract
		Membership:  rendezvous.Local(world),
		StartMethod: launcher.MethodSpawn,
		Base:        append(os.Environ(), opts.Env...),
	}
	g := &goRanks{specs: make([]launcher.Spec, n), output: out}
	for k := range g.specs {
		i := first + k
		var p place.Rank
		if i < len(opts.Ranks) {
			p = opts.Ranks[i]
		}
		stdout, stderr, _ := out.Open(i, i) // no files: cannot fail
		tail := launcher.NewTail(stderr)
		g.tails = append(g.tails, tail)
		g.specs[k] = launcher.Spec{
			Rank: i, LocalRank: i, Path: self, Args: []string{os.Args[0]},
			Env:    append(rc.Env(i, p), envRole+"="+role),
			Stdout: stdout, Stderr: tail, CPUs: p.CPUs,
		}
	}
	var err error
	if g.chans, err = launcher.AddChannels(broker, g.specs); err != nil {
		return nil, err
	}
	return g, nil
}

// close ends the ranks' channels (bounded, once they have exited) and
// their output.
func (g *goRanks) close() {
	g.chans.Close()
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
