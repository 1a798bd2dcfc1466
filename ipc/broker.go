package ipc

import (
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
)

// ParentRank is the rank number of the launcher itself as a producer or
// holder of handles.
const ParentRank = -1

// Broker runs in the launcher: it routes buffers, handles and queue
// messages between ranks over their control channels and tracks who holds
// every handle. A host buffer lives while anyone holds it (a queue holding
// a message that names it counts); a producer-owned handle dies with its
// producer, and its holders are told so.
//
// Requests are handled by Handle, called by whoever reads the rank's
// control channel; Detach is called when the rank has exited. Close ends
// the broker and reports leaked handles. A Broker is safe for concurrent
// use.
//
// The broker keeps three state machines, each in its own type: the
// handles (handleTable, broker_handles.go), the queues (queueTable,
// broker_queues.go) and each rank's waiting requests (waitSet,
// broker_waits.go). No request scans every queue or handle: a rank's
// waiting requests are indexed by request id, and the handles it touched
// by rank, so that a cancel or a rank's exit costs what that rank has,
// whatever the others hold. What a rank may make the broker keep is
// bounded (Limits).
type Broker struct {
	mu        sync.Mutex
	nextID    uint64 // the last handle id given
	handles   handleTable
	queues    queueTable
	peers     map[int]*peer
	parent    *peer // the launcher itself, as a publisher
	limits    Limits
	all       totals // what all ranks together make it keep
	limitsErr error  // a malformed limit in the environment: Attach fails with it
	closed    bool
	writers   sync.WaitGroup // every attached peer's writer
}

// totals is what all ranks together (the launcher's own publishes
// included) make the broker keep, bounded by Limits.TotalFDs and
// Limits.TotalQueuedBytes.
type totals struct {
	fds    int // descriptors of live host and fd handles
	queued int // bytes of put requests that queued messages keep
	peak   int // the most queued has been since the memory was last returned
}

// reclaimAfter is how many bytes must have waited in queues for the
// broker to return the memory to the system once they have all been got:
// the runtime would keep it for a while, as if it would be needed again.
const reclaimAfter = 1 << 20

// drained reports, b.mu held, whether every queued byte has been got
// after at least reclaimAfter waited, and if so starts counting anew.
func (b *Broker) drained() bool {
	if b.all.queued != 0 || b.all.peak < reclaimAfter {
		return false
	}
	b.all.peak = 0
	return true
}

// reclaim returns freed memory to the system when drained said so; b.mu
// is not held.
func reclaim(drained bool) {
	if drained {
		debug.FreeOSMemory()
	}
}

// peer is an attached rank. Frames to it go through its own writer (see
// peerWriter), never from another rank's reader.
type peer struct {
	rank int
	conn *Conn
	*peerWriter

	waits   waitSet             // its waiting requests, by request id
	entries map[*entry]struct{} // handles it holds, was given or published
	pending int                 // its waiting requests, puts without an id included
	held    int                 // handles it holds
	fds     int                 // live host and fd handles it published
	queues  int                 // live queues it created
	queued  int                 // bytes of its put requests that queued messages keep
}

func newPeer(rank int, conn *Conn, w *peerWriter) *peer {
	return &peer{rank: rank, conn: conn, peerWriter: w, waits: waitSet{}, entries: map[*entry]struct{}{}}
}

// outFrame is a frame to send once the broker's lock is released, or
// (closeAfter) a descriptor to close once the frame is written (or
// dropped).
type outFrame struct {
	p          *peer
	f          Frame
	closeAfter *os.File
}

// request is one request frame being served, b.mu held: who sent it, its
// id, its body (the payload after the op byte) and descriptors, and the
// frames its serving produced.
type request struct {
	p     *peer
	id    uint64
	body  []byte
	files []*os.File
	out   []outFrame
}

// reply answers the request.
func (r *request) reply(payload []byte, files ...*os.File) {
	r.out = append(r.out, outFrame{p: r.p, f: Frame{Type: FrameReply, ID: r.id, Payload: payload, Files: files}})
}

// NewBroker returns an empty broker. Its limits are those of the
// environment (LimitsFromEnv), unless an option says otherwise; a
// malformed limit in the environment is reported by Err, and makes every
// Attach (and so Serve) fail, naming it.
func NewBroker(opts ...BrokerOption) *Broker {
	b := &Broker{handles: handleTable{}, queues: queueTable{}, peers: map[int]*peer{}, parent: newPeer(ParentRank, nil, nil)}
	b.limits, b.limitsErr = newBrokerLimits()
	for _, o := range opts {
		o(b)
	}
	return b
}

// Limits returns the broker's limits.
func (b *Broker) Limits() Limits { return b.limits }

// Err returns why the broker cannot serve ranks: a malformed limit in the
// environment (see NewBroker), or nil. Check it before starting ranks.
func (b *Broker) Err() error { return b.limitsErr }

// Attach registers rank's control channel; Handle answers its requests on
// conn. A rank number can be attached once at a time: two jobs sharing a
// broker at once must not use the same rank numbers.
func (b *Broker) Attach(rank int, conn *Conn) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.limitsErr != nil {
		return b.limitsErr
	}
	if _, dup := b.peers[rank]; dup {
		return fmt.Errorf("ipc: broker: rank %d is already attached (is the broker shared by two jobs at once?)", rank)
	}
	p := newPeer(rank, conn, newPeerWriter())
	b.peers[rank] = p
	b.writers.Go(func() { p.run(p) })
	return nil
}

// Handle serves one request frame that rank sent. It never blocks on other
// ranks: a request that must wait (a Get on an empty queue, a Put on a full
// one) is answered later, when another rank's request frees it.
func (b *Broker) Handle(rank int, f Frame) {
	b.mu.Lock()
	r := &request{p: b.peers[rank], id: f.ID, files: f.Files}
	var err error
	switch {
	case r.p == nil:
		err = fmt.Errorf("%w: rank %d is not attached", errBadRequest, rank)
	case b.closed:
		err = ErrBrokerClosed
	case len(f.Payload) == 0:
		err = fmt.Errorf("%w: empty request", errBadRequest)
	default:
		r.body = f.Payload[1:]
		err = b.serve(r, f.Payload[0])
	}
	if err != nil && r.p != nil {
		r.out = append(r.out, outFrame{p: r.p, f: Frame{Type: FrameError, ID: f.ID, Payload: errPayload(err)}})
	}
	drained := b.drained()
	b.mu.Unlock()
	closeFiles(f.Files) // the broker dup'ed what it keeps
	b.send(r.out)
	reclaim(drained)
}

// serve dispatches one request to the method of its op; b.mu is held.
func (b *Broker) serve(r *request, op byte) error {
	switch op {
	case opGet, opGetBatch, opJoin, opWaitUnheld:
		if r.id == 0 {
			return fmt.Errorf("%w: a request that waits needs an id", errBadRequest)
		}
	}
	switch op {
	case opPublish:
		return b.servePublish(r)
	case opOpen:
		return b.serveOpen(r)
	case opCheck:
		return b.serveCheck(r)
	case opRelease:
		return b.serveRelease(r)
	case opPut:
		return b.servePut(r)
	case opPutBatch:
		return b.servePutBatch(r)
	case opGet:
		return b.serveGet(r, false)
	case opGetBatch:
		return b.serveGet(r, true)
	case opTaskDone:
		return b.serveTaskDone(r)
	case opJoin:
		return b.serveJoin(r)
	case opWaitUnheld:
		return b.serveWaitUnheld(r)
	case opCancel:
		return b.serveCancel(r)
	}
	return fmt.Errorf("%w: unknown op %d", errBadRequest, op)
}

// Detach is called when rank, attached with conn, has exited: every hold it had is released,
// its pending requests are dropped, and every producer-owned handle it
// produced that others still hold is marked gone, its holders told. It
// visits only what the rank waited on and the handles it touched.
func (b *Broker) Detach(rank int, conn *Conn) {
	b.mu.Lock()
	p := b.peers[rank]
	if p == nil || p.conn != conn {
		b.mu.Unlock() // not attached, or another job's rank of that number
		return
	}
	p.stop(p) // it has exited: what is still queued for it is dropped
	delete(b.peers, rank)
	b.dropWaits(p)
	var out []outFrame
	for e := range p.entries {
		out = b.forget(p, e, out)
	}
	clear(p.entries)
	drained := b.drained()
	b.mu.Unlock()
	b.send(out)
	reclaim(drained)
}

// Close ends the broker: later requests fail, every kept descriptor is
// closed, and the handles still held are returned, one line each, as
// leaks to report.
func (b *Broker) Close() []string {
	defer b.writers.Wait() // each ends at once once stopped, or within its write deadline
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for _, p := range b.peers {
		p.stop(p)
	}
	var leaks []string
	ids := make([]uint64, 0, len(b.handles))
	for id := range b.handles {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		e := b.handles[id]
		for _, w := range e.waiters {
			w.timer.Stop()
		}
		var by []string
		for r, n := range e.holders {
			if n > 0 {
				by = append(by, fmt.Sprintf("rank %d (%d)", r, n))
			}
		}
		sort.Strings(by)
		if e.queued > 0 {
			by = append(by, fmt.Sprintf("%d queued messages", e.queued))
		}
		leaks = append(leaks, fmt.Sprintf("%s never released; held by %v", e.h, by))
		b.free(e, nil)
	}
	return leaks
}

// send writes the frames; a rank that has gone away just misses them.
func (b *Broker) send(out []outFrame) {
	for _, o := range out {
		o.p.enqueue(o)
	}
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}
