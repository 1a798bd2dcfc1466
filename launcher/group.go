package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/internal/procfs"
	"github.com/mpspawn/mpspawn/launcher/diag"
	"github.com/mpspawn/mpspawn/launcher/internal/contain"
)

// A Group is a set of running ranks under one supervisor. It is created by
// Start, which starts every rank; Wait returns once every rank has been
// reaped. The first rank to fail stops all others (SIGTERM to each rank's
// process group, SIGKILL after the grace period). Signal forwards a signal
// the launcher received; cancelling the context given to Start stops the
// ranks too. A Group cannot be reused after Wait returns.
type Group struct {
	opts  Options
	ranks []*rankProc
	guard *contain.Guard
	thr   rankStarter
	cont  *containment // the job's cgroups, or the process-group fallback

	exits chan exitReport // a rank's process has exited
	sends chan delivery   // signals to deliver without stopping (Deliver)
	sigs  chan os.Signal  // forwarded signals
	stops chan error      // Stop requests
	done  chan struct{}
	res   *Result

	outputStalled bool // set by finish

	stacks     *diag.Dir    // the Python ranks' stack files, when Options asks for stacks
	lastOutput atomic.Int64 // UnixNano of the ranks' last output (HangTimeout)
	started    time.Time    // when Start started the ranks (Timeout)
}

// rankProc is one rank of the Group: its Spec as the caller gave it
// (with the Group's additions to its environment and stderr), what the
// Group set up for it before it starts, and its process once started. Its
// fields other than those owned by the supervisor are written before the
// waiter goroutine starts and only read after.
type rankProc struct {
	spec Spec

	// set up by Start before the rank starts
	cgroup     *os.File      // its cgroup's directory, when the job has cgroups: the rank is born in it
	cgroupPath string        // that cgroup's path
	activity   *atomic.Int64 // UnixNano of the ranks' last output (the watchdog)
	capture    *diag.Capture // its stderr's capture for a Go stack dump, when stacks are asked for

	// set by the start method
	proc    process
	started time.Time
	relays  sync.WaitGroup // stdout and stderr relays
	pipes   []*os.File     // read ends, closed when draining is over

	// lost is why the rank's exit status is unknown (its forkserver
	// died); written by the waiter before it reports the exit.
	lost error

	// owned by the supervisor goroutine
	res       RankResult
	exited    bool
	stopped   bool
	abandoned bool // not seen to exit KillWait after SIGKILL
	usage     usage

	live rankLive // what Snapshot reads: the last line and the exit
}

// process is a started rank process: a child of the launcher (spawn) or of
// its forkserver, which is not the launcher's child and is waited on
// through the server's reports.
type process interface {
	pid() int
	// wait blocks until the process has exited and been reaped. An error
	// means its status is unknown; the process is gone all the same.
	wait() (syscall.WaitStatus, error)
	// signal sends sig to the process itself (not its group), through a
	// pidfd: never to another process that reused its pid. A process
	// already gone is not an error.
	signal(sig syscall.Signal) error
	// release reaps the exited process and closes its pidfd, once the
	// Group is done signalling it and its group: only then may its pid be
	// reused. It returns the process's resource usage (its own and its
	// reaped children's), or nil when it is not known.
	release() *syscall.Rusage
	// abandon closes the process's pidfd without reaping it: it did not
	// exit when killed, and reaping it would block.
	abandon()
}

// setProcess records a started process in the rank and its result.
func (rp *rankProc) setProcess(p process) {
	rp.proc = p
	rp.res = RankResult{Rank: rp.spec.Rank, LocalRank: rp.spec.LocalRank, Pid: p.pid(), Started: rp.started, ErrorFilePath: rp.spec.ErrorFile}
}

// Start starts one process per spec and supervises them until Wait. If any
// rank fails to start, the ranks already started are killed and reaped
// before Start returns the error. Cancelling ctx stops the ranks, with
// context.Cause(ctx) as the reason.
func Start(ctx context.Context, specs []Spec, opts Options) (*Group, error) {
	if err := validate(specs); err != nil {
		return nil, err
	}
	g := &Group{
		opts:  opts,
		exits: make(chan exitReport, len(specs)),
		sends: make(chan delivery),
		sigs:  make(chan os.Signal, 8),
		stops: make(chan error, 1),
		done:  make(chan struct{}),
	}
	closeInherited()
	var err error
	if g.guard, err = contain.StartGuard(); err != nil {
		return nil, err
	}
	rps := newRanks(specs)
	if g.cont, err = newContainment(opts.Containment, rps, g.guard); err != nil {
		return nil, err
	}
	if err := g.watch(rps); err != nil {
		g.cont.close(g.opts.Stop.killWait())
		return nil, err
	}
	m := opts.StartMethod()
	if err := m.Ready(ctx); err != nil {
		g.cont.close(g.opts.Stop.killWait())
		g.stacks.Remove()
		return nil, err
	}
	g.thr = m.starter(len(specs))
	errs := make([]error, len(rps))
	var wg sync.WaitGroup
	for i, rp := range rps {
		wg.Go(func() {
			if errs[i] = g.thr.start(i, rp); errs[i] == nil {
				// At once, not after every rank has started: a launcher
				// SIGKILLed during a long start-up must leave nothing.
				g.guard.Watch(rp.proc.pid())
			}
		})
	}
	wg.Wait()
	var startErr error
	for i, rp := range rps {
		if errs[i] != nil {
			if startErr == nil {
				startErr = startError(rp.spec.Rank, errs[i])
			}
			continue
		}
		g.ranks = append(g.ranks, rp)
		go g.waitRank(len(g.ranks)-1, rp)
	}
	if startErr != nil {
		g.abort()
		return nil, startErr
	}
	go g.supervise(ctx)
	return g, nil
}

// abort kills and reaps the ranks started so far, after a failed start.
func (g *Group) abort() {
	for _, rp := range g.ranks {
		_ = killGroup(rp.proc.pid(), syscall.SIGKILL)
		_ = rp.proc.signal(syscall.SIGKILL)
	}
	for range g.ranks {
		<-g.exits // SIGKILLed and never run: they exit at once
	}
	g.finish()
}

// exitReport is how one rank's process ended, as its waiter saw it.
type exitReport struct {
	i     int
	ws    syscall.WaitStatus
	err   error // the status is unknown (its forkserver died)
	ended time.Time
}

// waitRank blocks until one rank has exited and reports its exit. The
// supervisor applies it, unless it gave up on the rank first (see
// Options.Stop.KillWait): a waiter blocked for good never touches the rank's result.
func (g *Group) waitRank(i int, rp *rankProc) {
	ws, err := rp.proc.wait()
	g.exits <- exitReport{i: i, ws: ws, err: err, ended: time.Now()}
}

// Signal forwards sig to every running rank's process group, then SIGKILLs
// them after the grace period. A second SIGINT kills them at once. The
// first signal forwarded becomes Result.Interrupted.
func (g *Group) Signal(sig os.Signal) {
	select {
	case g.sigs <- sig:
	case <-g.done:
	}
}

// delivery is a signal for Deliver, and the channel closed once it is sent.
type delivery struct {
	sig  syscall.Signal
	sent chan struct{}
}

// Deliver sends sig to every running rank (its process and its process
// group) without stopping the job, and returns once it is sent: SIGTSTP
// and SIGCONT when the launcher is suspended and resumed, say.
func (g *Group) Deliver(sig syscall.Signal) {
	d := delivery{sig, make(chan struct{})}
	select {
	case g.sends <- d:
		<-d.sent
	case <-g.done:
	}
}

// Stop stops every rank (SIGTERM, then SIGKILL after the grace period) and
// records cause as Result.Cause. It does not wait; call Wait.
func (g *Group) Stop(cause error) {
	select {
	case g.stops <- cause:
	case <-g.done:
	default: // a stop is already pending
	}
}

// Wait waits for every rank to exit and returns how they ended. It is safe
// to call from several goroutines; all get the same Result.
func (g *Group) Wait() *Result {
	<-g.done
	return g.res
}

// Done returns a channel that is closed once every rank has been reaped
// and Wait's Result is ready.
func (g *Group) Done() <-chan struct{} { return g.done }

// Pids returns the process ids of the ranks, ordered by rank.
func (g *Group) Pids() []int {
	pids := make([]int, len(g.ranks))
	for i, rp := range g.ranks {
		pids[i] = rp.proc.pid()
	}
	return pids
}

// supervisor state, owned by the supervise goroutine.
type supervisor struct {
	g           *Group
	live        int
	rootCause   int
	failures    []int
	interrupted os.Signal
	sigints     int
	cause       error
	killTimer   *time.Timer
	killC       <-chan time.Time   // the grace period is over
	giveUpC     <-chan time.Time   // KillWait after SIGKILL is over
	sigErrs     []error            // signals that could not be sent
	dog         *watchdog          // HangTimeout and Timeout, or nil
	dumped      chan []*diag.Stack // the stacks taken, by rank index, once taken
}

func (g *Group) supervise(ctx context.Context) {
	s := &supervisor{g: g, live: len(g.ranks), rootCause: -1}
	s.dog = newWatchdog(g.opts.Watchdog, g.started, &g.lastOutput)
	ctxDone := ctx.Done()
	for s.live > 0 {
		select {
		case now := <-s.dog.c():
			s.watchdogFired(now)
		case stacks := <-s.dumped:
			s.stacksTaken(stacks)
		case e := <-g.exits:
			s.exited(e)
		case sig := <-g.sigs:
			s.signalled(sig)
		case d := <-g.sends:
			s.sendLive(d.sig)
			close(d.sent)
		case cause := <-g.stops:
			s.stop(cause, syscall.SIGTERM)
		case <-ctxDone:
			ctxDone = nil
			s.cancelled(context.Cause(ctx))
		case <-s.killC:
			s.killC = nil
			s.signalLive(syscall.SIGKILL)
		case <-s.giveUpC:
			s.giveUpC = nil
			s.giveUp()
		}
	}
	if s.dumped != nil { // every rank exited while their stacks were taken
		s.stacksTaken(<-s.dumped)
	}
	s.dog.stop()
	if s.killTimer != nil {
		s.killTimer.Stop()
	}
	g.res = &Result{RootCause: -1, Failures: []int{}, Interrupted: s.interrupted, Cause: s.cause, SignalErr: errors.Join(s.sigErrs...),
		Containment: g.cont.kind, ContainmentNote: g.cont.note}
	g.finish()
	g.collect(s)
}

// giveUp stops waiting for ranks that did not exit KillWait after SIGKILL:
// they are reported as lost, with their process state.
func (s *supervisor) giveUp() {
	for i, rp := range s.g.ranks {
		if rp.exited {
			continue
		}
		msg := fmt.Sprintf("launcher: rank %d (pid %d) did not exit %v after SIGKILL (state %s)", rp.spec.Rank, rp.proc.pid(), s.g.opts.Stop.killWait(), procfs.StateName(rp.proc.pid()))
		rp.res.Note = msg
		rp.abandoned = true // never released: reaping it would block
		s.exited(exitReport{i: i, err: errors.New(msg), ended: time.Now()})
	}
}

// exited records rank e.i's exit and applies the first-failure policy.
func (s *supervisor) exited(e exitReport) {
	rp := s.g.ranks[e.i]
	if rp.exited {
		return // given up on earlier; its waiter came back at last
	}
	rp.exited = true
	r := &rp.res
	r.Ended = e.ended
	r.ExitCode, r.Signal = -1, 0
	switch {
	case e.err != nil:
		rp.lost, r.Signal = e.err, syscall.SIGKILL
	case e.ws.Signaled():
		r.Signal = e.ws.Signal()
	default:
		r.ExitCode = e.ws.ExitStatus()
	}
	r.Stopped = rp.stopped || rp.lost != nil
	rp.live.setExit(r)
	s.live--
	if rp.lost != nil {
		s.stop(rp.lost, syscall.SIGKILL) // not the rank's failure: the job's
	}
	if !r.Failed() {
		return
	}
	s.failures = append(s.failures, e.i)
	if s.rootCause < 0 && !rp.stopped && rp.lost == nil {
		s.rootCause = e.i
		if s.g.opts.Stop.OnRootCause != nil {
			s.g.opts.Stop.OnRootCause(*r)
		}
		s.stop(fmt.Errorf("launcher: rank %d failed with %s", rp.spec.Rank, r.Status()), syscall.SIGTERM)
	}
}

// signalled forwards a signal the launcher received.
func (s *supervisor) signalled(sig os.Signal) {
	if s.interrupted == nil {
		s.interrupted = sig
	}
	if sig == syscall.SIGINT {
		s.sigints++
		if s.sigints > 1 {
			s.signalLive(syscall.SIGKILL)
			return
		}
	}
	ssig, ok := sig.(syscall.Signal)
	if !ok {
		ssig = syscall.SIGTERM
	}
	s.stop(fmt.Errorf("launcher: interrupted by %v", sig), ssig)
}

// stop sends sig to every live rank and arms the SIGKILL timer, once.
func (s *supervisor) stop(cause error, sig syscall.Signal) {
	if s.cause == nil {
		s.cause = cause
	}
	s.signalLive(sig)
	if s.killTimer == nil {
		s.killTimer = time.NewTimer(s.g.opts.Stop.grace())
		s.killC = s.killTimer.C
	}
}

// signalLive sends sig to every live rank as a stop: they are marked
// stopped, and SIGKILL starts the bound on their exit.
func (s *supervisor) signalLive(sig syscall.Signal) {
	for _, rp := range s.g.ranks {
		if !rp.exited {
			rp.stopped = true
		}
	}
	s.sendLive(sig)
	if sig == syscall.SIGKILL {
		s.g.cont.kill() // and whatever the ranks started
	}
	if sig == syscall.SIGKILL && s.giveUpC == nil {
		s.giveUpC = time.After(s.g.opts.Stop.killWait())
	}
}

// sendLive sends sig to every live rank's process group and, where the
// rank has left that group, to the rank's own process through its pidfd (a
// rank's pid stays pinned until the launcher releases it, so no stranger is
// signalled). A rank still in its group gets sig once: a second SIGINT or
// SIGUSR1 would interrupt the handler the first one started.
func (s *supervisor) sendLive(sig syscall.Signal) {
	for _, rp := range s.g.ranks {
		if rp.exited {
			continue
		}
		pid := rp.proc.pid()
		if err := killGroup(pid, sig); err != nil {
			s.sigErrs = append(s.sigErrs, err)
		}
		if leadsGroup(pid) {
			continue // the group's signal reached it
		}
		if err := rp.proc.signal(sig); err != nil {
			s.sigErrs = append(s.sigErrs, fmt.Errorf("launcher: signal rank %d (pid %d) with %s: %w", rp.spec.Rank, rp.proc.pid(), SignalName(sig), err))
		}
	}
}

// finish is run once every rank has been reaped: it kills what is left in
// the ranks' process groups, drains their output (bounded), and releases
// the guard and the starter thread.
func (g *Group) finish() {
	g.cont.end(g.ranks, g.opts.Stop.killWait()) // every process the ranks started, wherever it went
	for _, rp := range g.ranks {
		_ = killGroup(rp.proc.pid(), syscall.SIGKILL)
	}
	g.outputStalled = g.drainOutput()
	for _, rp := range g.ranks {
		for _, f := range rp.pipes {
			f.Close()
		}
		g.guard.Unwatch(rp.proc.pid())
		if rp.abandoned {
			rp.proc.abandon()
		} else {
			rp.usage.rusage = rp.proc.release() // its group signalled for the last time: the pid may go
		}
		g.cont.usage(rp) // every process in its cgroup is gone
	}
	g.cont.close(g.opts.Stop.killWait())
	g.stacks.Remove()
	g.thr.close()
}

// drainOutput waits for the relays to pass on the ranks' last output, each
// step bounded by the drain time: first as it is; then with the pipes
// closed (a process outside the ranks' groups may hold them); then with
// the writers given up on (a console nobody reads blocks them). It reports
// whether output was lost to a writer that did not take it.
func (g *Group) drainOutput() (stalled bool) {
	drained := make(chan struct{})
	go func() {
		for _, rp := range g.ranks {
			rp.relays.Wait()
		}
		close(drained)
	}()
	steps := []func(){
		func() {},
		func() {
			for _, rp := range g.ranks {
				for _, f := range rp.pipes {
					f.Close()
				}
			}
		},
		func() {
			stalled = true
			for _, rp := range g.ranks {
				for _, w := range []io.Writer{rp.spec.Stdout, rp.spec.Stderr} {
					if a, ok := w.(abandoner); ok {
						a.Abandon()
					}
				}
			}
		},
	}
	for _, step := range steps {
		step()
		if waitFor(drained, g.opts.Stop.drain()) {
			return stalled
		}
	}
	// Relays blocked in writers that cannot be given up on: they are left
	// behind rather than hang the launcher.
	return true
}

// waitFor waits at most d for ch to close and reports whether it did.
func waitFor(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// abandoner is an output writer that can give up on a destination that
// does not take lines (Output's rank writers, Tail).
type abandoner interface{ Abandon() }

// collect builds the Result and releases Wait.
func (g *Group) collect(s *supervisor) {
	res := g.res
	for _, rp := range g.ranks {
		r := rp.res
		r.ErrorFile, _ = ReadErrorFile(rp.spec.ErrorFile)
		r.Cost = rp.usage.cost(r.Started, r.Ended)
		if r.Stack != nil && r.Stack.Kind == diag.StackGo {
			st := *r.Stack
			st.Text = diag.TrimGoStack(rp.capture.Text())
			r.Stack = &st
		}
		res.Ranks = append(res.Ranks, r)
	}
	res.RootCause = s.rootCause
	res.OutputStalled = g.outputStalled
	res.Failures = append(res.Failures, s.failures...)
	close(g.done)
}

// newRanks returns a rank for each of specs, ordered by rank, so that a
// rank's index in the Group is its index in Result.Ranks.
func newRanks(specs []Spec) []*rankProc {
	sorted := append([]Spec(nil), specs...)
	sort.SliceStable(sorted, func(a, b int) bool { return sorted[a].Rank < sorted[b].Rank })
	rps := make([]*rankProc, len(sorted))
	for i, s := range sorted {
		rps[i] = &rankProc{spec: s}
	}
	return rps
}
