package launcher

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/launcher/diag"
)

// The watchdog stops a job that hangs (Options.Watchdog.HangTimeout: no output
// from any rank for that long) or runs too long (Options.Watchdog.Timeout), after
// taking every live rank's stack (see diag.Stack). It runs in the supervisor.

// watchdog holds the supervisor's timer for HangTimeout and Timeout.
type watchdog struct {
	hang, timeout time.Duration
	start         time.Time
	last          *atomic.Int64 // UnixNano of the ranks' last output
	timer         *time.Timer
}

// newWatchdog returns the watchdog of opts, or nil when neither bound is
// set.
func newWatchdog(opts WatchdogOptions, start time.Time, last *atomic.Int64) *watchdog {
	if opts.HangTimeout <= 0 && opts.Timeout <= 0 {
		return nil
	}
	w := &watchdog{hang: opts.HangTimeout, timeout: opts.Timeout, start: start, last: last}
	w.timer = time.NewTimer(w.next(start))
	return w
}

// c is the channel that fires when a bound may have passed; nil for no
// watchdog.
func (w *watchdog) c() <-chan time.Time {
	if w == nil {
		return nil
	}
	return w.timer.C
}

// next is how long from now until the first bound can pass.
func (w *watchdog) next(now time.Time) time.Duration {
	d := time.Duration(-1)
	if w.timeout > 0 {
		d = w.start.Add(w.timeout).Sub(now)
	}
	if w.hang > 0 {
		h := time.Unix(0, w.last.Load()).Add(w.hang).Sub(now)
		if d < 0 || h < d {
			d = h
		}
	}
	return max(d, 0)
}

// fired checks the bounds when the timer fired: it returns the cause to
// stop the job with, or re-arms the timer and returns nil (output came
// since it was set).
func (w *watchdog) fired(now time.Time) error {
	if w.timeout > 0 && !now.Before(w.start.Add(w.timeout)) {
		return &diag.TimeoutError{Timeout: w.timeout}
	}
	if w.hang > 0 && now.Sub(time.Unix(0, w.last.Load())) >= w.hang {
		return &diag.HangError{Quiet: w.hang}
	}
	w.timer.Reset(w.next(now))
	return nil
}

func (w *watchdog) stop() {
	if w != nil {
		w.timer.Stop()
	}
}

// activityReader records the time of every read that returned output.
type activityReader struct {
	r    io.Reader
	last *atomic.Int64
}

func (a activityReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// watch sets up what the watchdog and the stacks need in ranks: the stack
// hook in every rank's environment, the capture of its stderr, and the
// record of its output's time.
func (g *Group) watch(ranks []*rankProc) error {
	g.started = time.Now()
	g.lastOutput.Store(g.started.UnixNano())
	if g.opts.Watchdog.stacks() {
		var err error
		if g.stacks, err = diag.NewDir(g.opts.Watchdog.StacksDir); err != nil {
			return err
		}
		for _, rp := range ranks {
			rp.spec.Env = g.stacks.Env(rp.spec.Env)
			rp.capture = diag.NewCapture(rp.spec.Stderr)
			rp.spec.Stderr = rp.capture
		}
	}
	for _, rp := range ranks {
		rp.activity = &g.lastOutput
	}
	return nil
}

// watchdogFired stops the job for a hang or a timeout, after taking the
// stacks, unless it is stopping already.
func (s *supervisor) watchdogFired(now time.Time) {
	cause := s.dog.fired(now)
	if cause == nil || s.cause != nil || s.dumped != nil {
		return
	}
	s.cause = cause
	if s.g.opts.Watchdog.OnCause != nil {
		s.g.opts.Watchdog.OnCause(cause)
	}
	s.takeStacks()
}

// takeStacks takes every live rank's stack in the background (each
// bounded) and sends them on s.dumped. The ranks count as stopped from
// now on: a Go rank that SIGQUIT ends is not the job's root cause.
func (s *supervisor) takeStacks() {
	var dir string
	if s.g.stacks != nil {
		dir = s.g.stacks.Path()
	}
	s.dumped = make(chan []*diag.Stack, 1)
	var live []int
	for i, rp := range s.g.ranks {
		if !rp.exited {
			rp.stopped = true
			live = append(live, i)
		}
	}
	go func() {
		out := make([]*diag.Stack, len(s.g.ranks))
		var wg sync.WaitGroup
		for _, i := range live {
			rp := s.g.ranks[i]
			wg.Go(func() { out[i] = diag.Take(rp.proc.pid(), dir, rp.proc.signal, true, rp.capture) })
		}
		wg.Wait()
		s.dumped <- out
	}()
}

// stacksTaken records the stacks and stops the ranks still running.
func (s *supervisor) stacksTaken(stacks []*diag.Stack) {
	s.dumped = nil
	for i, st := range stacks {
		if st != nil {
			s.g.ranks[i].res.Stack = st
		}
	}
	if s.live > 0 {
		s.stop(s.cause, syscall.SIGTERM)
	}
}

// StacksFirst is a cause of a stop, given as the cause of the context
// Start was given, that asks the Group to take its ranks' stacks before it
// stops them, as its own watchdog would: the stop for a hang or a timeout
// that another node's launcher found. Result.Cause is then the
// StacksFirst, which unwraps to Err.
type StacksFirst struct{ Err error }

func (e *StacksFirst) Error() string { return e.Err.Error() }

// Unwrap returns Err.
func (e *StacksFirst) Unwrap() error { return e.Err }

// cancelled stops the ranks when the Group's context is done. When the
// cause is a StacksFirst, the ranks' stacks are taken first. While stacks
// are being taken the ranks are left alone: stacksTaken stops them.
func (s *supervisor) cancelled(cause error) {
	var sf *StacksFirst
	switch {
	case s.dumped != nil:
		return
	case s.cause == nil && errors.As(cause, &sf):
		s.cause = cause
		s.takeStacks()
		return
	}
	s.stop(cause, syscall.SIGTERM)
}
