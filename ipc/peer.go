package ipc

import (
	"fmt"
	"sync"
	"time"
)

// What a rank that does not read its control channel may cost the others.
const (
	// peerQueue is how many frames may wait for a rank before it is cut
	// off: far more than honest waits (a Get per queue, a Pool's tasks)
	// ever queue.
	peerQueue = 4096
	// peerWriteTimeout bounds one frame's write to a rank.
	peerWriteTimeout = 10 * time.Second
	// lastWriteTimeout bounds the write of the error frame that tells a
	// rank why its channel is being closed.
	lastWriteTimeout = time.Second
)

// peerWriter writes the broker's frames to one rank, in order, from a
// goroutine of its own: a rank that stops reading its channel fills only
// its own queue and blocks only its own writer, never the reader of
// another rank whose request produced the frame (a put that completes a
// waiting Get, say). A rank whose queue is full, or to which a frame
// cannot be written within peerWriteTimeout, is cut off: its channel is
// closed, and the server loop reading it (Broker.Serve) returns why.
//
// A rank's writer ends when the rank is detached (stop): what is still
// queued is dropped, and a write under way is cut short, since nobody will
// read it. A rank that broke the protocol is told why first (finish).
type peerWriter struct {
	q    chan outFrame
	quit chan struct{}
	last chan outFrame // the frame finish leaves, written after quit

	once      sync.Once // closes quit
	cutOnce   sync.Once
	mu        sync.Mutex
	cutErr    error
	stopped   bool // no new write starts
	finishing bool // a last frame is to be written: stop does not cut it short
}

func newPeerWriter() *peerWriter {
	return &peerWriter{q: make(chan outFrame, peerQueue), quit: make(chan struct{}), last: make(chan outFrame, 1)}
}

// enqueue hands o to the writer, or drops it (and cuts the rank off when
// its queue is full).
func (w *peerWriter) enqueue(o outFrame) {
	if w == nil { // the launcher's own peer (ParentRank) is never written to
		closeOut(o)
		return
	}
	select {
	case <-w.quit:
		closeOut(o)
		return
	default:
	}
	select {
	case w.q <- o:
	default:
		closeOut(o)
		w.cut(o.p, fmt.Errorf("ipc: rank %d does not read its control channel: %d replies wait for it", o.p.rank, peerQueue))
	}
}

// run writes the queued frames until the rank is detached, then the last
// frame finish left, if any.
func (w *peerWriter) run(p *peer) {
	for {
		select {
		case o := <-w.q:
			w.write(p, o)
		case <-w.quit:
			for {
				select {
				case o := <-w.q:
					closeOut(o)
				default:
					w.writeLast(p)
					return
				}
			}
		}
	}
}

// write writes one frame, bounded by peerWriteTimeout.
func (w *peerWriter) write(p *peer, o outFrame) {
	defer closeOut(o)
	if w.err() != nil {
		return
	}
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	_ = p.conn.SetWriteDeadline(time.Now().Add(peerWriteTimeout))
	w.mu.Unlock()
	err := p.conn.WriteFrame(o.f)
	_ = p.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		w.cut(p, fmt.Errorf("ipc: rank %d: a frame could not be written within %v (does it read its control channel?): %w", p.rank, peerWriteTimeout, err))
	}
}

// cut cuts the rank off: its channel is closed, once, and err is why.
func (w *peerWriter) cut(p *peer, err error) {
	w.cutOnce.Do(func() {
		w.mu.Lock()
		w.cutErr = err
		w.mu.Unlock()
		p.conn.Close()
	})
}

// err is why the rank was cut off, or nil.
func (w *peerWriter) err() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cutErr
}

// writeLast writes the frame finish left, bounded by lastWriteTimeout,
// and closes the channel after it: the rank reads the frame, then end of
// stream.
func (w *peerWriter) writeLast(p *peer) {
	select {
	case o := <-w.last:
		if w.err() == nil {
			_ = p.conn.SetWriteDeadline(time.Now().Add(lastWriteTimeout))
			_ = p.conn.WriteFrame(o.f)
		}
		closeOut(o)
		p.conn.Close()
	default:
	}
}

// finish ends the writer with o, the error frame that tells the rank why
// its channel is closed: frames still queued are dropped, o is written
// (bounded), then the channel is closed.
func (w *peerWriter) finish(o outFrame) {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.finishing = true
	w.mu.Unlock()
	select {
	case w.last <- o:
	default: // finished already
		closeOut(o)
	}
	w.endRun()
}

// stop ends the writer, once its rank is detached: frames still queued are
// dropped and a write under way is cut short (a write deadline in the
// past), unless finish left a last frame to write.
func (w *peerWriter) stop(p *peer) {
	if w == nil {
		return
	}
	w.mu.Lock()
	if !w.stopped && !w.finishing {
		_ = p.conn.SetWriteDeadline(time.Now())
	}
	w.stopped = true
	w.mu.Unlock()
	w.endRun()
}

// endRun tells run to end.
func (w *peerWriter) endRun() {
	w.once.Do(func() { close(w.quit) })
}

// closeOut closes what o owns, written or dropped.
func closeOut(o outFrame) {
	if o.closeAfter != nil {
		o.closeAfter.Close()
	}
}
