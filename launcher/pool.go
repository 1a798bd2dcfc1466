package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/ipc"
)

// ErrPoolClosed is returned for work given to a Pool after Close or
// Terminate, and for queued work that Terminate dropped.
var ErrPoolClosed = errors.New("launcher: pool is closed")

// ErrWorkerDied is wrapped by the error of a task whose worker process died
// while running it. The Pool replaces the worker and lives on.
var ErrWorkerDied = errors.New("launcher: pool worker died")

// Pool is a set of worker processes of this binary that run registered
// functions over items, like Python's multiprocessing.Pool: Map, Apply,
// Starmap, their async forms returning a Future, and MapUnordered.
//
// A task that returns an error or panics fails that item only (with a
// *RankError carrying the panic value and stack); the worker lives on. A
// worker that dies fails the task it was running with ErrWorkerDied and is
// replaced: the Pool never hangs. Close stops taking work and lets the
// queued work finish; Terminate stops the workers at once, failing queued
// work with ErrPoolClosed; Join waits for the workers to exit after either.
// A Pool cannot be reused after Join.
type Pool struct {
	opts    SpawnOptions
	output  *Output // shared by every worker, so lines never interleave
	n       int
	tasks   chan *poolTask
	quit    chan struct{} // closed by Terminate
	workers sync.WaitGroup
	pending sync.WaitGroup // submissions not yet taken by a worker

	mu        sync.Mutex
	closed    bool
	live      map[int]*Group // worker slot → its running process
	closeOnce sync.Once
	termOnce  sync.Once
}

// poolTask is one chunk of items for one function.
type poolTask struct {
	ctx   context.Context
	fn    string
	items [][]byte
	done  func(res []itemResult, worker, pid int, err error)
}

// NewPool starts workers processes of this binary (the number of CPUs when
// workers < 1). They run until Close and Join, or Terminate. The binary
// must call Main at the top of main.
func NewPool(workers int, opts *SpawnOptions) (*Pool, error) {
	if workers < 1 {
		workers = runtime.NumCPU()
	}
	p := &Pool{n: workers, tasks: make(chan *poolTask), quit: make(chan struct{}), live: map[int]*Group{}}
	if opts != nil {
		p.opts = *opts
	}
	p.output = &Output{Stdout: p.opts.Stdout, Stderr: p.opts.Stderr, Prefix: p.opts.Prefix}
	starts := make([]*poolWorker, workers)
	for i := range workers {
		w, err := p.startWorker(i)
		if err != nil {
			for _, w := range starts[:i] {
				w.kill()
			}
			return nil, fmt.Errorf("launcher: pool: %w", err)
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
	slot  int
	group *Group
	conn  *ipc.Conn
	tail  *tailWriter
	pid   int
}

// startWorker starts the process for worker slot i.
func (p *Pool) startWorker(i int) (*poolWorker, error) {
	procs, err := goSpecs(roleWorker, i, 1, p.n, &p.opts, p.output)
	if err != nil {
		return nil, err
	}
	// Each worker is a group of its own, so that one worker's death does
	// not stop the others; it still gets the launcher's supervision and
	// no-orphans guarantee.
	g, err := Start(context.Background(), procs.specs, Options{GracePeriod: p.opts.grace()})
	closeAll(procs.children)
	if err != nil {
		closeConns(procs.conns)
		return nil, err
	}
	w := &poolWorker{slot: i, group: g, conn: procs.conns[0], tail: procs.tails[0], pid: g.Pids()[0]}
	p.mu.Lock()
	p.live[i] = g
	p.mu.Unlock()
	return w, nil
}

// kill stops the worker's process and releases its channel.
func (w *poolWorker) kill() {
	w.group.Stop(ErrPoolClosed)
	w.group.Wait()
	w.conn.Close()
}

// run feeds tasks to the worker in slot w.slot until the queue closes,
// replacing the worker process whenever it dies.
func (p *Pool) run(w *poolWorker) {
	var id uint64
	for {
		var t *poolTask
		var ok bool
		select {
		case t, ok = <-p.tasks:
		case <-p.quit:
		case <-w.group.done: // died while idle: replace it before it is given work
			w.conn.Close()
			if w = p.replace(w); w == nil {
				return
			}
			continue
		}
		if !ok || t == nil {
			p.retire(w)
			return
		}
		if err := t.ctx.Err(); err != nil {
			t.done(nil, w.slot, w.pid, context.Cause(t.ctx))
			continue
		}
		if w = p.runTask(w, t, &id); w == nil {
			return
		}
	}
}

// runTask runs t on worker w and returns the worker to use next: w, or its
// replacement when it died. A task the dead worker never received goes to
// the replacement; one it died running fails with ErrWorkerDied. nil means
// the pool is terminating.
func (p *Pool) runTask(w *poolWorker, t *poolTask, id *uint64) *poolWorker {
	for {
		*id++
		res, delivered, err := w.do(t, *id)
		if err == nil {
			t.done(res, w.slot, w.pid, nil)
			return w
		}
		w.conn.Close()
		w.group.Stop(err) // a broken channel to a live worker
		rr := w.group.Wait().Ranks[0]
		if delivered {
			t.done(nil, w.slot, w.pid, &RankError{
				Rank: w.slot, Pid: w.pid, ExitCode: rr.ExitCode, Signal: rr.Signal, Stderr: w.tail.String(),
				Message: fmt.Sprintf("%v: %s while running a task", ErrWorkerDied, rr.Status()), Err: ErrWorkerDied,
			})
		}
		if w = p.replace(w); w == nil {
			if !delivered {
				t.done(nil, -1, 0, ErrPoolClosed)
			}
			return nil
		}
		if delivered {
			return w
		}
	}
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
		p.fail(fmt.Errorf("launcher: pool: replace worker %d: %w", w.slot, err))
		return nil
	}
	return nw
}

// do sends one task to the worker and waits for its reply. delivered is
// false when the task could not be sent, so it cannot have run.
func (w *poolWorker) do(t *poolTask, id uint64) (res []itemResult, delivered bool, err error) {
	payload, err := encode(callMsg{Func: t.fn, Items: t.items})
	if err != nil {
		return nil, false, err
	}
	if err := w.conn.WriteFrame(ipc.Frame{Type: ipc.FrameRequest, ID: id, Payload: payload}); err != nil {
		return nil, false, err
	}
	f, err := w.conn.ReadFrame()
	if err != nil {
		return nil, true, err
	}
	closeAll(f.Files)
	if err := checkPeer(w.conn, w.pid); err != nil {
		return nil, true, err
	}
	if f.Type != ipc.FrameReply || f.ID != id {
		return nil, true, fmt.Errorf("launcher: pool: unexpected %v frame %d", f.Type, f.ID)
	}
	if err := decode(f.Payload, &res); err != nil || len(res) != len(t.items) {
		return nil, true, fmt.Errorf("launcher: pool: bad reply (%d results for %d items): %v", len(res), len(t.items), err)
	}
	return res, true, nil
}

// retire ends a worker at the close of the pool: it is told to exit, and
// killed if it does not within the grace period.
func (p *Pool) retire(w *poolWorker) {
	_ = w.conn.WriteFrame(ipc.Frame{Type: ipc.FrameClose})
	select {
	case <-w.group.done:
	case <-p.quit:
		w.group.Stop(ErrPoolClosed)
	case <-time.After(p.opts.grace()):
		w.group.Stop(errors.New("launcher: pool worker did not exit after close"))
	}
	w.group.Wait()
	w.conn.Close()
	p.mu.Lock()
	delete(p.live, w.slot)
	p.mu.Unlock()
}

// fail terminates the pool after an error it cannot recover from (a worker
// that cannot be replaced).
func (p *Pool) fail(err error) {
	fmt.Fprintf(os.Stderr, "mpspawn: %v; terminating the pool\n", err)
	go p.Terminate()
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
			t.done(nil, -1, 0, ErrPoolClosed)
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
}

// Size is the number of workers.
func (p *Pool) Size() int { return p.n }
