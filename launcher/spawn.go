package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/place"
)

// DefaultSpawnGracePeriod is the time between SIGTERM and SIGKILL for Go
// ranks when SpawnOptions.GracePeriod is zero.
const DefaultSpawnGracePeriod = 5 * time.Second

// SpawnOptions tune Spawn and NewPool. The zero value is usable.
type SpawnOptions struct {
	// Env is added to every rank's environment, over the parent's.
	Env []string
	// Ranks, when not nil, is each rank's placement by index (extra
	// environment, CPU binding), for example made from package gpu's plan,
	// as the CLI does.
	Ranks []place.Rank
	// GracePeriod is the time between SIGTERM and SIGKILL when ranks are
	// stopped; zero means DefaultSpawnGracePeriod.
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

// RankError is the failure of one rank (or of one Pool task): the typed
// counterpart of torch's ProcessRaisedException and ProcessExitedException.
// Use errors.As to get it from Join, Map or Get.
type RankError struct {
	// Rank is the failing rank (for a Pool task, the worker).
	Rank int
	// Pid is the rank's process id.
	Pid int
	// Message is the error the function returned, "panic: <value>" for a
	// panic, or the exit status for a rank that died without reporting.
	Message string
	// Panicked is true when the function panicked; PanicValue is the value
	// it panicked with, formatted with %v.
	Panicked   bool
	PanicValue string
	// Stack is the rank's own stack: for a panic, the panicking
	// goroutine's, naming the line that panicked; for a returned error, the
	// error's own stack if it formats one with %+v, else where the
	// function was called.
	Stack string
	// ExitCode and Signal are how the rank process ended (-1 and the signal
	// when a signal killed it); zero for a Pool task that failed in a
	// worker that lives on.
	ExitCode int
	Signal   syscall.Signal
	// Stderr holds the last lines the rank wrote to stderr: where the Go
	// runtime prints a fatal error's traceback.
	Stderr string
	// Err is the launcher's sentinel for the failure, when there is one
	// (ErrWorkerDied); errors.Is sees it through the RankError.
	Err error
}

// Unwrap returns Err.
func (e *RankError) Unwrap() error { return e.Err }

// Error describes the failure on one line; the stack is in Stack.
func (e *RankError) Error() string {
	return fmt.Sprintf("launcher: rank %d (pid %d) failed: %s", e.Rank, e.Pid, e.Message)
}

// Spawned is a running Spawn. Its methods may be called from several
// goroutines; Join and Wait return the same outcome every time.
type Spawned[R any] struct {
	group   *Group
	broker  *ipc.Broker
	ownBrk  bool
	stderr  io.Writer
	conns   []*ipc.Conn
	tails   []*tailWriter
	output  *Output
	readers sync.WaitGroup

	results []R
	gotRes  []bool
	remote  []*remoteError
	chanErr []error

	once sync.Once
	err  error
}

// Spawn starts nprocs processes of this binary, each running fn(ctx, rank,
// args), and returns at once; Join waits for them. The processes are
// started and supervised by the same code as the CLI's ranks: the first
// failure (a returned error, a panic, a non-zero exit, a signal) stops the
// others (SIGTERM, then SIGKILL after the grace period), cancelling ctx
// stops them all, and none outlives the parent, even a parent killed with
// SIGKILL. The binary must call Main at the top of main.
func Spawn[A, R any](ctx context.Context, fn Func[A, R], nprocs int, args A, opts *SpawnOptions) (*Spawned[R], error) {
	if opts == nil {
		opts = &SpawnOptions{}
	}
	if nprocs < 1 {
		return nil, fmt.Errorf("launcher: spawn %s: %d ranks: want at least 1", fn.name, nprocs)
	}
	if _, ok := lookup(fn.name); !ok {
		return nil, fmt.Errorf("launcher: spawn: function %q is not registered", fn.name)
	}
	in, err := ipc.Encode(args)
	if err != nil {
		return nil, fmt.Errorf("launcher: spawn %s: encode args: %w", fn.name, err)
	}
	payload, err := ipc.Encode(callMsg{Func: fn.name, Args: in})
	if err != nil {
		return nil, fmt.Errorf("launcher: spawn %s: %w", fn.name, err)
	}
	s := &Spawned[R]{
		results: make([]R, nprocs), gotRes: make([]bool, nprocs),
		remote: make([]*remoteError, nprocs), chanErr: make([]error, nprocs),
	}
	s.output = &Output{Stdout: opts.Stdout, Stderr: opts.Stderr, Prefix: opts.Prefix}
	s.broker, s.ownBrk, s.stderr = opts.Broker, opts.Broker == nil, opts.Stderr
	if s.ownBrk {
		s.broker = ipc.NewBroker()
	}
	if s.stderr == nil {
		s.stderr = os.Stderr
	}
	procs, err := goSpecs(roleRank, 0, nprocs, nprocs, opts, s.output)
	if err != nil {
		return nil, fmt.Errorf("launcher: spawn %s: %w", fn.name, err)
	}
	s.conns, s.tails = procs.conns, procs.tails
	s.group, err = Start(ctx, procs.specs, Options{GracePeriod: opts.grace()})
	closeAll(procs.children)
	if err != nil {
		closeConns(s.conns)
		return nil, fmt.Errorf("launcher: spawn %s: %w", fn.name, err)
	}
	pids := s.group.Pids()
	for i, c := range s.conns {
		if err := s.broker.Attach(i, c); err != nil {
			s.group.Stop(err) // this job's ranks cannot be told apart from another's
		}
		s.readers.Go(func() { s.serve(i, c, pids[i], payload) })
	}
	return s, nil
}

// serve sends rank i its arguments and reads what it reports until its
// end of the channel closes.
func (s *Spawned[R]) serve(i int, c *ipc.Conn, pid int, payload []byte) {
	defer s.broker.Detach(i, c) // the rank is gone: its holds are released
	if err := c.WriteFrame(ipc.Frame{Type: ipc.FrameArgs, Payload: payload}); err != nil {
		s.chanErr[i] = err
		return // the rank died first; its exit says why
	}
	for {
		f, err := c.ReadFrame()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) {
				s.chanErr[i] = err
			}
			return
		}
		if err := checkPeer(c, pid); err != nil {
			closeAll(f.Files)
			s.chanErr[i] = err
			s.group.Stop(err)
			return
		}
		if f.Type == ipc.FrameRequest {
			s.broker.Handle(i, f) // buffers, handles, queues
			continue
		}
		closeAll(f.Files)
		switch f.Type {
		case ipc.FrameResult:
			if err := ipc.Decode(f.Payload, &s.results[i]); err != nil {
				s.chanErr[i] = fmt.Errorf("decode result: %w", err)
				continue
			}
			s.gotRes[i] = true
		case ipc.FrameError:
			var re remoteError
			if err := ipc.Decode(f.Payload, &re); err != nil {
				s.chanErr[i] = fmt.Errorf("decode error: %w", err)
				continue
			}
			s.remote[i] = &re
		}
	}
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
	// Every rank has exited; a grandchild still holding a control socket
	// is in a rank's process group and was killed, but bound the wait all
	// the same.
	deadline := time.Now().Add(time.Second)
	for _, c := range s.conns {
		_ = c.SetReadDeadline(deadline)
	}
	s.readers.Wait()
	closeConns(s.conns)
	if s.ownBrk {
		for _, leak := range s.broker.Close() {
			fmt.Fprintf(s.stderr, "mpspawn: warning: %s\n", leak)
		}
	}
	s.output.Close()
	s.err = s.outcome(res)
}

// outcome turns the group's result into Join's error.
func (s *Spawned[R]) outcome(res *Result) error {
	if res.RootCause >= 0 {
		return s.rankError(res.RootCause, res)
	}
	if res.Cause != nil {
		return fmt.Errorf("launcher: ranks stopped: %w", res.Cause)
	}
	for i := range s.results {
		if !s.gotRes[i] {
			msg := "exited 0 without reporting a result"
			if s.chanErr[i] != nil {
				msg = s.chanErr[i].Error()
			}
			return &RankError{Rank: i, Pid: res.Ranks[i].Pid, Message: msg, Stderr: s.tails[i].String()}
		}
	}
	return nil
}

func (s *Spawned[R]) rankError(i int, res *Result) *RankError {
	rr := res.Ranks[i]
	e := &RankError{Rank: rr.Rank, Pid: rr.Pid, ExitCode: rr.ExitCode, Signal: rr.Signal, Message: rr.Status(), Stderr: s.tails[i].String()}
	if re := s.remote[i]; re != nil {
		e.Message, e.Panicked, e.PanicValue, e.Stack = re.Message, re.Panicked, re.Panic, re.Stack
	} else if strings.Contains(e.Stderr, "goroutine ") {
		e.Stack = e.Stderr // a Go fatal error or signal traceback
	}
	return e
}

func (o *SpawnOptions) grace() time.Duration {
	if o.GracePeriod > 0 {
		return o.GracePeriod
	}
	return DefaultSpawnGracePeriod
}

// goProcs is what goSpecs prepares for Go ranks or Pool workers.
type goProcs struct {
	specs    []Spec
	children []*os.File // the ranks' ends of the control channels; close after Start
	conns    []*ipc.Conn
	tails    []*tailWriter // each rank's stderr, last lines kept
}

// close releases everything after a failed start.
func (g *goProcs) close() {
	closeAll(g.children)
	closeConns(g.conns)
}

// goSpecs prepares ranks first .. first+n-1 of world that run this binary in
// role, each with a fresh control channel, writing their output to out.
// opts.Ranks is indexed by rank.
func goSpecs(role string, first, n, world int, opts *SpawnOptions, out *Output) (*goProcs, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	g := &goProcs{specs: make([]Spec, n)}
	for k := range g.specs {
		i := first + k
		parent, child, err := ipc.Pair()
		if err != nil {
			g.close()
			return nil, err
		}
		g.conns = append(g.conns, parent)
		g.children = append(g.children, child)
		stdout, stderr, _ := out.Open(i, i) // no files: cannot fail
		tail := newTailWriter(stderr)
		g.tails = append(g.tails, tail)
		g.specs[k] = Spec{
			Rank: i, LocalRank: i, Path: exe, Args: []string{os.Args[0]},
			Env: goEnv(role, i, world, opts), ExtraFiles: []*os.File{child},
			Stdout: stdout, Stderr: tail,
		}
		if i < len(opts.Ranks) {
			g.specs[k].CPUs = opts.Ranks[i].CPUs
		}
	}
	return g, nil
}

// goEnv is a Go rank's environment: the parent's, opts.Env, the rank
// contract and the placement.
func goEnv(role string, i, n int, opts *SpawnOptions) []string {
	env := append(os.Environ(), opts.Env...)
	env = append(env,
		envRole+"="+role,
		envControlFD+"="+strconv.Itoa(controlFD),
		"RANK="+strconv.Itoa(i), "LOCAL_RANK="+strconv.Itoa(i),
		"WORLD_SIZE="+strconv.Itoa(n), "LOCAL_WORLD_SIZE="+strconv.Itoa(n),
		"GROUP_RANK=0", "MPSPAWN_START_METHOD=spawn",
		"MPSPAWN_LAUNCHER_PID="+strconv.Itoa(os.Getpid()),
	)
	if i < len(opts.Ranks) {
		for k, v := range opts.Ranks[i].Env {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// checkPeer verifies that the frame just read from c was written by pid,
// the rank the launcher started at the other end (the kernel attaches the
// writer's credentials to every frame).
func checkPeer(c *ipc.Conn, pid int) error {
	cred, err := c.PeerCred()
	if err != nil {
		return fmt.Errorf("launcher: control channel peer: %w", err)
	}
	if int(cred.Pid) != pid {
		return fmt.Errorf("launcher: control channel peer is pid %d, not the rank's pid %d", cred.Pid, pid)
	}
	return nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func closeConns(conns []*ipc.Conn) {
	for _, c := range conns {
		c.Close()
	}
}
