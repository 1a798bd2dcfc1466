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
)

// peerWriter writes the broker's frames to one rank, in order, from a
// goroutine of its own: a rank that stops reading its channel fills only
// its own queue and blocks only its own writer, never the reader of
// another rank whose request produced the frame (a put that completes a
// waiting Get, say). A rank whose queue is full, or to which a frame
// cannot be written within peerWriteTimeout, is cut off: its channel is
// closed, and the server loop reading it (Broker.Serve) returns why.
type peerWriter struct {
	q    chan outFrame
	quit chan struct{}

	once    sync.Once // closes quit
	cutOnce sync.Once
	mu      sync.Mutex
	cutErr  error
}

func newPeerWriter() *peerWriter {
	return &peerWriter{q: make(chan outFrame, peerQueue), quit: make(chan struct{})}
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

// run writes the queued frames until the rank is detached.
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
	_ = p.conn.SetWriteDeadline(time.Now().Add(peerWriteTimeout))
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

// stop ends the writer: frames still queued are dropped.
func (w *peerWriter) stop() {
	if w != nil {
		w.once.Do(func() { close(w.quit) })
	}
}

// closeOut closes what o owns, written or dropped.
func closeOut(o outFrame) {
	if o.closeAfter != nil {
		o.closeAfter.Close()
	}
}
