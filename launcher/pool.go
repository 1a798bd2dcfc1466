package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	broker  *ipc.Broker
	ownBrk  bool
	n       int
	tasks   chan *poolTask
	quit    chan struct{} // closed by Terminate
	workers sync.WaitGroup
	pending sync.WaitGroup // submissions not yet taken by a worker

	mu          sync.Mutex
	closed      bool
	live        map[int]*Group // worker slot → its running process
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
	slot   int
	group  *Group
	conn   *ipc.Conn
	tail   *tailWriter
	pid    int
	broker *ipc.Broker // serves the worker's own requests (buffers, queues)
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
	w := &poolWorker{slot: i, group: g, conn: procs.conns[0], tail: procs.tails[0], pid: g.Pids()[0], broker: p.broker}
	if err := p.broker.Attach(i, w.conn); err != nil {
		w.kill()
		return nil, err
	}
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
	w.broker.Detach(w.slot, w.conn)
}

// pipelineDepth is how many tasks a worker is given at once: while it runs
// one, the next is already on its way, so that it never waits for the
// parent between tasks.
const pipelineDepth = 2

// flight is a task sent to a worker whose reply has not been read.
type flight struct {
	t  *poolTask
	id uint64
}

// run feeds tasks to the worker in slot w.slot until the queue closes,
// replacing the worker process whenever it dies. Up to pipelineDepth tasks
// are in flight; replies come back in order.
func (p *Pool) run(w *poolWorker) {
	var (
		id     uint64
		flying []flight
		retry  *poolTask // sent to a worker that was already dead: never ran
		closed bool      // the queue is closed: no more tasks
	)
	for {
		var t *poolTask
		switch {
		case retry != nil:
			t, retry = retry, nil
		case closed || len(flying) >= pipelineDepth:
		case len(flying) == 0: // idle: wait for work, the end, or the worker's death
			select {
			case next, ok := <-p.tasks:
				t, closed = next, !ok
			case <-p.quit:
				p.retire(w)
				return
			case <-w.group.done:
				w.conn.Close()
				p.broker.Detach(w.slot, w.conn)
				if w = p.replace(w); w == nil {
					return
				}
				continue
			}
		default: // one in flight: take another only if it is there
			select {
			case next, ok := <-p.tasks:
				t, closed = next, !ok
			default:
			}
		}
		if t != nil {
			if err := t.ctx.Err(); err != nil {
				t.done(nil, w.slot, w.pid, context.Cause(t.ctx))
				continue
			}
			id++
			if err := w.send(t, id); err != nil {
				retry = t
				if w = p.lose(w, flying, err); w == nil {
					t.done(nil, -1, 0, ErrPoolClosed)
					return
				}
				flying = nil
				continue
			}
			flying = append(flying, flight{t, id})
			continue
		}
		if len(flying) == 0 {
			if closed {
				p.retire(w)
				return
			}
			continue
		}
		reply, err := w.recv(flying[0].id)
		var re *RankError
		if err == nil || errors.As(err, &re) && re.Pid == w.pid && re.Err == nil {
			flying[0].t.done(reply, w.slot, w.pid, err) // the worker ran the chunk and lives on
			flying = flying[1:]
			continue
		}
		if w = p.lose(w, flying, err); w == nil {
			return
		}
		flying = nil
	}
}

// lose handles a worker that died (or whose channel broke, err): it is
// stopped and reaped, every task it was given fails with ErrWorkerDied, and
// its replacement is returned (nil when the pool is terminating).
func (p *Pool) lose(w *poolWorker, flying []flight, err error) *poolWorker {
	w.conn.Close()
	w.group.Stop(err) // a broken channel to a live worker
	rr := w.group.Wait().Ranks[0]
	p.broker.Detach(w.slot, w.conn)
	for _, f := range flying {
		f.t.done(nil, w.slot, w.pid, &RankError{
			Rank: w.slot, Pid: w.pid, ExitCode: rr.ExitCode, Signal: rr.Signal, Stderr: w.tail.String(),
			Message: fmt.Sprintf("%v: %s while running a task", ErrWorkerDied, rr.Status()), Err: ErrWorkerDied,
		})
	}
	return p.replace(w)
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

// send sends task t to the worker under id. An error means the task was
// not delivered, so it cannot have run.
func (w *poolWorker) send(t *poolTask, id uint64) error {
	return w.conn.WriteFrame(ipc.Frame{Type: ipc.FrameRequest, ID: id, Payload: t.payload})
}

// recv reads the reply to task id. A chunk the worker could not run at all
// (an unregistered function, items that do not decode) is a *RankError with
// the worker's pid and no Err; any other error means the worker is lost.
func (w *poolWorker) recv(id uint64) ([]byte, error) {
	f, err := w.conn.ReadFrame()
	for err == nil && f.Type == ipc.FrameRequest { // the task uses buffers or queues
		if err = checkPeer(w.conn, w.pid); err != nil {
			closeAll(f.Files)
			return nil, err
		}
		w.broker.Handle(w.slot, f)
		f, err = w.conn.ReadFrame()
	}
	if err != nil {
		return nil, err
	}
	closeAll(f.Files)
	if err := checkPeer(w.conn, w.pid); err != nil {
		return nil, err
	}
	switch {
	case f.ID != id:
		return nil, fmt.Errorf("launcher: pool: reply %d to task %d", f.ID, id)
	case f.Type == ipc.FrameReply:
		return f.Payload, nil
	case f.Type == ipc.FrameError:
		var re remoteError
		if err := ipc.Decode(f.Payload, &re); err != nil {
			return nil, fmt.Errorf("launcher: pool: bad error reply: %w", err)
		}
		return nil, &RankError{Rank: w.slot, Pid: w.pid, Message: re.Message}
	}
	return nil, fmt.Errorf("launcher: pool: unexpected %v frame", f.Type)
}

// retire ends a worker at the close of the pool: it is told to exit, and
// killed if it does not within the grace period.
func (p *Pool) retire(w *poolWorker) {
	_ = w.conn.WriteFrame(ipc.Frame{Type: ipc.FrameClose})
	// Serve what the worker still asks on its way out (its last puts, the
	// wait for holders of its producer-owned handles) until it exits.
	served := make(chan struct{})
	go func() {
		defer close(served)
		for {
			f, err := w.conn.ReadFrame()
			if err != nil {
				return
			}
			if f.Type == ipc.FrameRequest && checkPeer(w.conn, w.pid) == nil {
				w.broker.Handle(w.slot, f)
				continue
			}
			closeAll(f.Files)
		}
	}()
	select {
	case <-w.group.done:
	case <-p.quit:
		w.group.Stop(ErrPoolClosed)
	case <-time.After(p.opts.grace() + ipc.DefaultCloseWait):
		w.group.Stop(errors.New("launcher: pool worker did not exit after close"))
	}
	w.group.Wait()
	_ = w.conn.SetReadDeadline(time.Now().Add(time.Second)) // a grandchild may hold the socket
	<-served
	w.conn.Close()
	p.broker.Detach(w.slot, w.conn)
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
	if p.ownBrk {
		p.closeBroker.Do(func() {
			for _, leak := range p.broker.Close() {
				fmt.Fprintf(p.stderr(), "mpspawn: warning: %s\n", leak)
			}
		})
	}
}

func (p *Pool) stderr() io.Writer {
	if p.opts.Stderr != nil {
		return p.opts.Stderr
	}
	return os.Stderr
}

// Size is the number of workers.
func (p *Pool) Size() int { return p.n }
