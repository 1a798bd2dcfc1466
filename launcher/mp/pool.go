package mp

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/internal/codec"
	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/launcher"
)

// ErrPoolClosed is returned for work given to a Pool after Close or
// Terminate, and for queued work that Terminate dropped.
var ErrPoolClosed = errors.New("mp: pool is closed")

// ErrWorkerDied is wrapped by the error of a task whose worker process died
// while running it. The Pool replaces the worker and lives on.
var ErrWorkerDied = errors.New("mp: pool worker died")

// Pool is a set of worker processes of this binary that run registered
// functions over items, like Python's multiprocessing.Pool: Map, Apply,
// Starmap, their async forms returning a Future, and MapUnordered.
//
// A task that returns an error or panics fails that item only (with a
// *RankError carrying the panic value and stack); the worker lives on. A
// worker that dies fails the task it was running with ErrWorkerDied and is
// replaced; the tasks it had been given but not started go to its
// replacement. The Pool never hangs. Close stops taking work and lets the
// queued work finish; Terminate stops the workers at once, failing queued
// work with ErrPoolClosed; Join waits for the workers to exit after either.
// A Pool cannot be reused after Join.
type Pool struct {
	opts    Options
	output  *launcher.Output // shared by every worker, so lines never interleave
	broker  *ipc.Broker
	ownBrk  bool
	n       int
	tasks   chan *poolTask
	quit    chan struct{} // closed by Terminate
	workers sync.WaitGroup
	pending sync.WaitGroup // submissions not yet taken by a worker

	mu          sync.Mutex
	closed      bool
	failed      error                   // why the pool terminated itself (see fail)
	live        map[int]*launcher.Group // worker slot → its running process
	closeOnce   sync.Once
	termOnce    sync.Once
	closeBroker sync.Once
}

// poolTask is one chunk of items for one function.
type poolTask struct {
	ctx context.Context
	// payload is the FrameRequest payload: the function's name as a field,
	// then the chunk's items as appendSlice encodes them.
	payload []byte
	// done receives the worker's batchReply, encoded, or the error that
	// failed the whole chunk.
	done func(reply []byte, worker, pid int, err error)
}

// NewPool starts workers processes of this binary (the number of CPUs when
// workers < 1). They run until Close and Join, or Terminate. The binary
// must call Main first thing in main; called in a rank that did not,
// NewPool returns ErrInsideRank.
func NewPool(workers int, opts *Options) (*Pool, error) {
	if insideRank() {
		return nil, ErrInsideRank
	}
	if workers < 1 {
		workers = runtime.NumCPU()
	}
	p := &Pool{n: workers, tasks: make(chan *poolTask), quit: make(chan struct{}), live: map[int]*launcher.Group{}}
	if opts != nil {
		p.opts = *opts
	}
	p.output = &launcher.Output{Stdout: p.opts.Stdout, Stderr: p.opts.Stderr, Prefix: p.opts.Prefix}
	p.broker, p.ownBrk = p.opts.Broker, p.opts.Broker == nil
	if p.ownBrk {
		p.broker = ipc.NewBroker()
	}
	starts := make([]*poolWorker, workers)
	for i := range workers {
		w, err := p.startWorker(i)
		if err != nil {
			for _, w := range starts[:i] {
				w.kill()
			}
			return nil, fmt.Errorf("mp: pool: %w", err)
		}
		starts[i] = w
	}
	for _, w := range starts {
		p.workers.Go(func() { p.run(w) })
	}
	return p, nil
}

// poolWorker is one running worker process.
type poolWorker struct {
	slot    int
	group   *launcher.Group
	ranks   *goRanks
	pid     int
	replies chan ipc.Frame // the worker's replies to its tasks, in order
}

// startWorker starts the process for worker slot i.
func (p *Pool) startWorker(i int) (*poolWorker, error) {
	ranks, err := newGoRanks(roleWorker, i, 1, p.n, &p.opts, p.output, p.broker)
	if err != nil {
		return nil, err
	}
	// Each worker is a group of its own, so that one worker's death does
	// not stop the others; it still gets the launcher's supervision and
	// no-orphans guarantee.
	g, err := launcher.Start(context.Background(), ranks.specs, launcher.Options{Stop: launcher.StopOptions{GracePeriod: p.opts.grace()}})
	if err != nil {
		ranks.close()
		return nil, err
	}
	w := &poolWorker{slot: i, group: g, ranks: ranks, pid: g.Pids()[0], replies: make(chan ipc.Frame, workerDepth)}
	ranks.chans.Serve(g, w.deliver)
	p.mu.Lock()
	p.live[i] = g
	p.mu.Unlock()
	return w, nil
}

// deliver takes a reply the worker sent; at most workerDepth can be
// due, so it blocks only a worker that replies to tasks it was not given,
// until the pool reads the extra reply and loses the worker for it.
func (w *poolWorker) deliver(_ int, f ipc.Frame) error {
	closeAll(f.Files)
	if f.Type != ipc.FrameReply && f.Type != ipc.FrameError {
		return fmt.Errorf("mp: pool worker %d: unexpected %v frame", w.slot, f.Type)
	}
	w.replies <- f
	return nil
}

// ended is closed when the worker's channel has ended: it exited, or broke
// the protocol (and is being stopped).
func (w *poolWorker) ended() <-chan struct{} { return w.ranks.chans.Done(0) }

// kill stops the worker's process and releases its channel.
func (w *poolWorker) kill() {
	w.group.Stop(ErrPoolClosed)
	w.group.Wait()
	w.ranks.close()
}

// workerDepth is how many tasks the Pool sends a worker before it waits
// for a reply: while the worker runs one, the next is already on its way,
// so that it never waits for the parent between tasks. The worker's inbox
// holds that many and the close that follows them (see serveWorker).
const workerDepth = 2

// flight is a task sent to a worker whose reply has not been read.
type flight struct {
	t  *poolTask
	id uint64
}

// slot is what run keeps for one worker slot: its worker, the tasks in
// flight to it, those to give again, and whether the queue is closed.
type slot struct {
	w      *poolWorker
	id     uint64 // the last task id sent
	flying []flight
	retry  []*poolTask // given to a worker that died before starting them
	closed bool        // the queue is closed: no more tasks
}

// run feeds tasks to the worker in slot w.slot until the queue closes,
// replacing the worker process whenever it dies. Up to workerDepth
// tasks are in flight; the worker runs them in order, so replies come back
// in order and the first task in flight is the one it is running.
func (p *Pool) run(w *poolWorker) {
	s := &slot{w: w}
	for {
		lost, end := p.fill(s)
		switch {
		case end:
			return
		case lost:
			if !p.relieve(s, ErrWorkerDied) {
				return
			}
			continue
		case len(s.flying) == 0:
			if s.closed {
				p.retire(s.w)
				return
			}
			continue
		}
		err := s.await()
		var re *RankError
		if err == nil || errors.As(err, &re) && re.Pid == s.w.pid && re.Err == nil {
			s.flying = s.flying[1:] // the worker ran the chunk and lives on
			continue
		}
		if !p.relieve(s, err) {
			return
		}
	}
}

// fill sends s's worker tasks until workerDepth are in flight, or none is
// there to send. lost: a send failed (the worker is gone); end: run is
// done (the worker retired, or the pool is terminating).
func (p *Pool) fill(s *slot) (lost, end bool) {
	for len(s.flying) < workerDepth {
		var t *poolTask
		switch {
		case len(s.retry) > 0:
			t, s.retry = s.retry[0], s.retry[1:]
		case s.closed:
		case len(s.flying) == 0: // idle: wait for work, the end, or the worker's death
			select {
			case next, ok := <-p.tasks:
				t, s.closed = next, !ok
			case <-p.quit:
				p.retire(s.w)
				return false, true
			case <-s.w.ended():
				if s.w = p.lose(s.w, nil, nil); s.w == nil {
					failAll(s.retry, p.closedErr())
					return false, true
				}
				continue
			}
		default: // one in flight: take another only if it is there
			select {
			case next, ok := <-p.tasks:
				t, s.closed = next, !ok
			default:
			}
		}
		if t == nil {
			return false, false
		}
		if err := t.ctx.Err(); err != nil {
			t.done(nil, s.w.slot, s.w.pid, context.Cause(t.ctx))
			continue
		}
		s.id++
		if err := s.w.send(t, s.id); err != nil {
			s.retry = append([]*poolTask{t}, s.retry...) // the worker died: t never reached it
			return true, false
		}
		s.flying = append(s.flying, flight{t, s.id})
	}
	return false, false
}

// await reads the reply to the first task in flight, or why the worker's
// channel ended first.
func (s *slot) await() error {
	var f ipc.Frame
	select {
	case f = <-s.w.replies:
	case <-s.w.ended():
		select { // a reply sent before the end comes first
		case f = <-s.w.replies:
		default:
			return s.w.lostErr()
		}
	}
	return s.flying[0].reply(f, s.w)
}

// relieve replaces s's worker, lost with err, giving the tasks it had
// behind the failed one to its replacement. It reports false, with every
// task left failed, when the pool is terminating.
func (p *Pool) relieve(s *slot, err error) bool {
	if s.w = p.lose(s.w, s.flying, err); s.w == nil {
		failAll(s.retry, p.closedErr())
		return false
	}
	s.retry = requeue(s.flying, s.retry)
	s.flying = nil
	return true
}

// requeue puts the tasks a lost worker had been given behind the one it
// was running (flying[0], which failed) back in front of retry.
func requeue(flying []flight, retry []*poolTask) []*poolTask {
	var out []*poolTask
	for _, f := range flying[min(1, len(flying)):] {
		out = append(out, f.t)
	}
	return append(out, retry...)
}

// failAll fails tasks that no worker will run, with err: the pool is
// terminating.
func failAll(tasks []*poolTask, err error) {
	for _, t := range tasks {
		t.done(nil, -1, 0, err)
	}
}

// lostErr is why a worker's channel ended with tasks in flight.
func (w *poolWorker) lostErr() error {
	if err := w.ranks.chans.Err(0); err != nil {
		return err
	}
	return ErrWorkerDied
}

// reply completes flight f with the frame the worker sent for it. A
// chunk the worker could not run at all (an unregistered function, items
// that do not decode) is a *RankError with the worker's pid and no Err;
// any other error means the worker is lost, and f is not completed.
func (f flight) reply(fr ipc.Frame, w *poolWorker) error {
	switch {
	case fr.ID != f.id:
		return fmt.Errorf("mp: pool worker %d: reply %d to task %d", w.slot, fr.ID, f.id)
	case fr.Type == ipc.FrameReply:
		f.t.done(fr.Payload, w.slot, w.pid, nil)
		return nil
	}
	var re remoteError
	if err := codec.Decode(fr.Payload, &re); err != nil {
		return fmt.Errorf("mp: pool worker %d: bad error reply: %w", w.slot, err)
	}
	err := &RankError{Rank: w.slot, Pid: w.pid, Message: re.Message}
	f.t.done(nil, w.slot, w.pid, err)
	return err
}

// lose handles a worker that died or broke the protocol (err): it is
// stopped and reaped, the task it was running (flying[0]) fails with
// ErrWorkerDied, and its replacement is returned (nil when the pool is
// terminating). The caller gives the tasks behind it to the replacement.
func (p *Pool) lose(w *poolWorker, flying []flight, err error) *poolWorker {
	if err == nil {
		err = ErrWorkerDied
	}
	w.group.Stop(err) // a broken channel to a live worker
	rr := w.group.Wait().Ranks[0]
	w.ranks.close()
	if len(flying) > 0 {
		msg := fmt.Sprintf("%v: %s while running a task", ErrWorkerDied, rr.Status())
		if !errors.Is(err, ErrWorkerDied) {
			msg = fmt.Sprintf("%v: %v", ErrWorkerDied, err)
		}
		flying[0].t.done(nil, w.slot, w.pid, &RankError{
			Rank: w.slot, Pid: w.pid, ExitCode: rr.ExitCode, Signal: rr.Signal, Stderr: w.ranks.tails[0].String(),
			Message: msg, Err: ErrWorkerDied,
		})
	}
	nw := p.replace(w)
	if nw == nil {
		failAll(requeue(flying, nil), p.closedErr())
	}
	return nw
}

// replace starts a new process in dead worker w's slot; nil when the pool
// is terminating or the start failed (the pool is then terminated).
func (p *Pool) replace(w *poolWorker) *poolWorker {
	select {
	case <-p.quit:
		return nil
	default:
	}
	nw, err := p.startWorker(w.slot)
	if err != nil {
		p.fail(fmt.Errorf("mp: pool: replace worker %d: %w", w.slot, err))
		return nil
	}
	return nw
}

// send sends task t to the worker under id. An error means the task was
// not delivered, so it cannot have run.
func (w *poolWorker) send(t *poolTask, id uint64) error {
	return w.ranks.chans.Conn(0).WriteFrame(ipc.Frame{Type: ipc.FrameRequest, ID: id, Payload: t.payload})
}

// retire ends a worker at the close of the pool: it is told to exit, and
// killed if it does not within the grace period. Its channel is served
// until it exits (its last puts, the wait for holders of its
// producer-owned handles).
func (p *Pool) retire(w *poolWorker) {
	_ = w.ranks.chans.Conn(0).WriteFrame(ipc.Frame{Type: ipc.FrameClose})
	t := time.NewTimer(p.opts.grace() + ipc.DefaultCloseWait)
	defer t.Stop()
	select {
	case <-w.group.Done():
	case <-p.quit:
		w.group.Stop(ErrPoolClosed)
	case <-t.C:
		w.group.Stop(errors.New("mp: pool worker did not exit after close"))
	}
	w.group.Wait()
	w.ranks.close()
	p.mu.Lock()
	delete(p.live, w.slot)
	p.mu.Unlock()
}

// fail terminates the pool after an error it cannot recover from (a worker
// that cannot be replaced): the work it drops fails with an error that
// wraps ErrPoolClosed and err (see closedErr), and Err reports err.
func (p *Pool) fail(err error) {
	p.mu.Lock()
	if p.failed == nil {
		p.failed = err
	}
	p.mu.Unlock()
	p.Terminate()
}

// Err returns why the pool terminated itself (a worker that died could not
// be replaced), or nil. The work it dropped failed with that error too.
func (p *Pool) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

// closedErr is the error of work the pool drops: ErrPoolClosed, and why
// the pool terminated itself, if it did.
func (p *Pool) closedErr() error {
	if err := p.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrPoolClosed, err)
	}
	return ErrPoolClosed
}

// submit queues a task, or fails it at once when the pool is closed.
func (p *Pool) submit(t *poolTask) {
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.pending.Add(1)
	}
	p.mu.Unlock()
	if closed {
		t.done(nil, -1, 0, ErrPoolClosed)
		return
	}
	go func() {
		defer p.pending.Done()
		select {
		case p.tasks <- t:
		case <-p.quit:
			t.done(nil, -1, 0, p.closedErr())
		case <-t.ctx.Done():
			t.done(nil, -1, 0, context.Cause(t.ctx))
		}
	}()
}

// Close stops the pool from taking new work; queued work still runs. Call
// Join to wait for it and for the workers to exit.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.closeOnce.Do(func() { go p.drain() })
}

// drain closes the task queue once every submitted task has been taken.
// Submissions block on the unbuffered queue, so closing it is safe only
// when no submitter is left: pending counts them.
func (p *Pool) drain() {
	p.pending.Wait()
	close(p.tasks)
}

// Terminate stops every worker at once (SIGTERM, then SIGKILL after the
// grace period); queued and running work fails with ErrPoolClosed or
// ErrWorkerDied. Call Join to wait for the workers to exit.
func (p *Pool) Terminate() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.termOnce.Do(func() {
		close(p.quit)
		p.mu.Lock()
		for _, g := range p.live {
			g.Stop(ErrPoolClosed)
		}
		p.mu.Unlock()
	})
}

// Join waits for every worker to exit, after Close or Terminate.
func (p *Pool) Join() {
	p.workers.Wait()
	p.closeBroker.Do(func() {
		p.output.Close()
		if p.ownBrk {
			for _, leak := range p.broker.Close() {
				fmt.Fprintf(p.opts.stderr(), "mpspawn: warning: %s\n", leak)
			}
		}
	})
}

// Size is the number of workers.
func (p *Pool) Size() int { return p.n }
