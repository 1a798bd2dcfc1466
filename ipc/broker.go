package ipc

import (
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"time"
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
// No request scans every queue or handle: a rank's waiting requests are
// indexed by request id, and the handles it touched by rank, so that a
// cancel or a rank's exit costs what that rank has, whatever the others
// hold. What a rank may make the broker keep is bounded (Limits).
type Broker struct {
	mu        sync.Mutex
	nextID    uint64
	handles   map[uint64]*entry
	queues    map[uint64]*queue
	peers     map[int]*peer
	parent    *peer // the launcher itself, as a publisher
	limits    Limits
	limitsErr error // a malformed limit in the environment: Attach fails with it
	closed    bool
	writers   sync.WaitGroup // every attached peer's writer
}

// peer is an attached rank. Frames to it go through its own writer (see
// peerWriter), never from another rank's reader.
type peer struct {
	rank int
	conn *Conn
	*peerWriter

	waits   map[uint64]wait     // its waiting requests, by request id
	entries map[*entry]struct{} // handles it holds, was given or published
	pending int                 // its waiting requests, puts without an id included
	held    int                 // handles it holds
	fds     int                 // live host and fd handles it published
	queues  int                 // live queues it created
	queued  int                 // bytes of its put requests that queued messages keep
}

// wait is where a waiting request is: on a queue (a Get, a Put waiting
// for room, a Join), or a wait for a handle's holders.
type wait struct {
	q *queue
	e *entry
	w *waiter
}

func newPeer(rank int, conn *Conn, w *peerWriter) *peer {
	return &peer{rank: rank, conn: conn, peerWriter: w, waits: map[uint64]wait{}, entries: map[*entry]struct{}{}}
}

// entry is the broker's record of one handle.
type entry struct {
	h       Handle
	file    *os.File    // KindHost, KindFD
	blob    []byte      // KindProducerOwned
	holders map[int]int // rank (or ParentRank) → holds
	queued  int         // messages in queues that name it
	given   map[int]bool
	public  bool  // published by the parent: every rank may receive it
	gone    bool  // producer-owned and the producer exited
	owner   *peer // the publisher, charged for e.file while e lives
	notify  *peer // the producer to tell when the handle is freed, if it asked
	waiters []*waiter
}

// waiter is a producer waiting (opWaitUnheld) for its handle's holders.
type waiter struct {
	p     *peer
	id    uint64
	timer *time.Timer
	done  bool
}

// queue is a broker-side queue.
type queue struct {
	ref        queueRef
	creator    *peer // charged for the queue while it exists
	items      []message
	getters    []getter // waiting for an item
	putters    []pendingPut
	unfinished int
	joiners    []pending
}

type message struct {
	handles []Handle
	value   []byte
	pin     *pinned // the request payload value points into
}

// pinned is a put request's payload while messages in queues point into
// it: charged to the rank that put it, until the last of them is got or
// dropped.
type pinned struct {
	from *peer
	size int
	refs int
}

// unpin drops a message's hold on its request payload.
func (m message) unpin() {
	if m.pin == nil {
		return
	}
	if m.pin.refs--; m.pin.refs == 0 {
		m.pin.from.queued -= m.pin.size
	}
}

// pin charges p for a put request's payload of size bytes, within its
// limit; the caller releases the charge with done once the messages made
// from it hold it (or none does).
func (b *Broker) pin(p *peer, size int) (*pinned, error) {
	if p.rank != ParentRank && p.queued+size > b.limits.QueuedBytes {
		return nil, limitErr(p.rank, fmt.Sprintf("%d bytes it put wait in queues", p.queued), b.limits.QueuedBytes, EnvMaxQueuedBytes)
	}
	p.queued += size
	return &pinned{from: p, size: size, refs: 1}, nil
}

// done drops the request's own hold on the pin: the messages made from it
// keep it.
func (pin *pinned) done() { message{pin: pin}.unpin() }

type pending struct {
	p  *peer
	id uint64
}

// getter is a rank waiting in Get: for one message, or (batch) for up to
// max of them.
type getter struct {
	pending
	max   int
	batch bool
}

type pendingPut struct {
	pending
	msg message
}

// outFrame is a frame to send once the broker's lock is released, or
// (closeAfter) a descriptor to close once the frame is written (or
// dropped).
type outFrame struct {
	p          *peer
	f          Frame
	closeAfter *os.File
}

// NewBroker returns an empty broker. Its limits are those of the
// environment (LimitsFromEnv), unless an option says otherwise; a
// malformed limit in the environment is reported by Err, and makes every
// Attach (and so Serve) fail, naming it.
func NewBroker(opts ...BrokerOption) *Broker {
	b := &Broker{handles: map[uint64]*entry{}, queues: map[uint64]*queue{}, peers: map[int]*peer{}, parent: newPeer(ParentRank, nil, nil)}
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
	p := b.peers[rank]
	var out []outFrame
	var err error
	switch {
	case p == nil:
		err = fmt.Errorf("%w: rank %d is not attached", errBadRequest, rank)
	case b.closed:
		err = ErrBrokerClosed
	case len(f.Payload) == 0:
		err = fmt.Errorf("%w: empty request", errBadRequest)
	default:
		err = b.serve(p, f, &out)
	}
	if err != nil && p != nil {
		out = append(out, outFrame{p: p, f: Frame{Type: FrameError, ID: f.ID, Payload: errPayload(err)}})
	}
	b.mu.Unlock()
	closeFiles(f.Files) // the broker dup'ed what it keeps
	b.send(out)
}

// serve dispatches one request; b.mu is held.
func (b *Broker) serve(p *peer, f Frame, out *[]outFrame) error {
	reply := func(payload []byte, files ...*os.File) {
		*out = append(*out, outFrame{p: p, f: Frame{Type: FrameReply, ID: f.ID, Payload: payload, Files: files}})
	}
	body := f.Payload[1:]
	switch f.Payload[0] {
	case opGet, opGetBatch, opJoin, opWaitUnheld:
		if f.ID == 0 {
			return fmt.Errorf("%w: a request that waits needs an id", errBadRequest)
		}
	}
	switch f.Payload[0] {
	case opPublish:
		h, err := b.publish(p, body, f.Files)
		if err != nil {
			return err
		}
		reply(AppendHandle(nil, h))
	case opOpen:
		e, err := b.usable(p.rank, body)
		if err != nil {
			return err
		}
		if e.public && p.rank != ParentRank {
			if e.holders[p.rank] == 0 && p.held >= b.limits.Handles {
				return limitErr(p.rank, "holds too many handles", b.limits.Handles, EnvMaxHandles)
			}
			b.hold(p, e) // released by the rank's Close, or its exit
		}
		if e.file != nil {
			// A duplicate: e.file may be closed (freed) before the reply
			// is written, once the lock is released.
			dup, err := dupFile(e.file)
			if err != nil {
				return err
			}
			reply(nil, dup)
			(*out)[len(*out)-1].closeAfter = dup // once the reply is written
		} else {
			reply(e.blob)
		}
	case opCancel:
		if len(body) < 8 {
			return fmt.Errorf("%w: short cancel", errBadRequest)
		}
		*out = b.cancel(p, binary.LittleEndian.Uint64(body), *out)
		reply(nil)
	case opCheck:
		if _, err := b.usable(p.rank, body); err != nil {
			return err
		}
		reply(nil)
	case opRelease:
		e, err := b.lookup(p.rank, body)
		if err != nil {
			return err
		}
		if e.holders[p.rank] == 0 {
			return fmt.Errorf("%w: %s is not held by rank %d (released twice?)", ErrBadHandle, e.h, p.rank)
		}
		b.unhold(p, e)
		*out = b.settle(e, *out)
		reply(nil)
	case opPut:
		var err error
		*out, err = b.put(p, f.ID, body, *out)
		return err
	case opPutBatch:
		var err error
		*out, err = b.putBatch(p, body, *out)
		return err
	case opGet, opGetBatch:
		ref, rest, err := cutQueueRef(body)
		if err != nil {
			return err
		}
		g := getter{pending: pending{p, f.ID}, max: 1}
		if f.Payload[0] == opGetBatch && len(rest) >= 2 {
			g.max, g.batch = max(int(binary.LittleEndian.Uint16(rest)), 1), true
		}
		if p.held >= b.limits.Handles && p.rank != ParentRank {
			return limitErr(p.rank, "holds too many handles to take more from a queue", b.limits.Handles, EnvMaxHandles)
		}
		q, err := b.queue(p, ref)
		if err != nil {
			return err
		}
		if err := b.park(p, f.ID, q, nil); err != nil {
			b.tidy(q)
			return err
		}
		q.getters = append(q.getters, g)
		*out = b.pump(q, *out)
	case opTaskDone:
		ref, _, err := cutQueueRef(body)
		if err != nil {
			return err
		}
		q := b.queues[ref.ID]
		if q == nil || q.unfinished == 0 {
			return fmt.Errorf("%w: TaskDone called more times than items were put", errBadRequest)
		}
		q.unfinished--
		reply(nil)
		*out = b.pump(q, *out)
	case opJoin:
		ref, _, err := cutQueueRef(body)
		if err != nil {
			return err
		}
		q, err := b.queue(p, ref)
		if err != nil {
			return err
		}
		if err := b.park(p, f.ID, q, nil); err != nil {
			b.tidy(q)
			return err
		}
		q.joiners = append(q.joiners, pending{p, f.ID})
		*out = b.pump(q, *out)
	case opWaitUnheld:
		e, err := b.lookup(p.rank, body)
		if err != nil {
			return err
		}
		if len(body) < HandleSize+4 {
			return fmt.Errorf("%w: short wait", errBadRequest)
		}
		timeout := time.Duration(binary.LittleEndian.Uint32(body[HandleSize:])) * time.Millisecond
		w := &waiter{p: p, id: f.ID}
		if err := b.park(p, f.ID, nil, &wait{e: e, w: w}); err != nil {
			return err
		}
		e.waiters = append(e.waiters, w)
		w.timer = time.AfterFunc(timeout, func() { b.expire(e, w) })
		*out = b.settle(e, *out)
	default:
		return fmt.Errorf("%w: unknown op %d", errBadRequest, f.Payload[0])
	}
	return nil
}

// cancel drops p's waiting request id (a Get, a Put on a full queue, a
// Join, a wait for holders), whose caller gave up. A request already
// answered is not affected: its reply went out before the cancel's. It
// looks at the one queue or handle the request waits on.
func (b *Broker) cancel(p *peer, id uint64, out []outFrame) []outFrame {
	wt, ok := p.waits[id]
	if !ok {
		return out // answered already, or never waiting
	}
	if wt.w != nil {
		b.unwait(wt.e, wt.w)
		return out
	}
	q := wt.q
	mine := func(x pending) bool { return x.p == p && x.id == id }
	q.getters = slices.DeleteFunc(q.getters, func(g getter) bool { return mine(g.pending) })
	q.joiners = slices.DeleteFunc(q.joiners, mine)
	var dropped []*entry
	q.putters = slices.DeleteFunc(q.putters, func(pp pendingPut) bool {
		if !mine(pp.pending) {
			return false
		}
		for _, h := range pp.msg.handles {
			e := b.handles[h.ID]
			e.queued-- // never queued after all
			dropped = append(dropped, e)
		}
		pp.msg.unpin()
		return true
	})
	b.unpark(p, id)
	for _, e := range dropped {
		if b.handles[e.h.ID] == e { // not freed by an earlier one
			out = b.settle(e, out)
		}
	}
	b.tidy(q)
	return out
}

// park records that p's request id waits (on q, or as the wait w), within
// p's limit. Only a put may have id 0 (no reply): it is not indexed, and
// cannot be cancelled.
func (b *Broker) park(p *peer, id uint64, q *queue, w *wait) error {
	if p.rank != ParentRank && p.pending >= b.limits.Pending {
		return limitErr(p.rank, fmt.Sprintf("%d requests wait already", p.pending), b.limits.Pending, EnvMaxPending)
	}
	if id != 0 {
		if _, dup := p.waits[id]; dup {
			return fmt.Errorf("%w: request id %d is waiting already", errBadRequest, id)
		}
		if w != nil {
			p.waits[id] = *w
		} else {
			p.waits[id] = wait{q: q}
		}
	}
	p.pending++
	return nil
}

// unpark forgets p's waiting request id, answered or dropped.
func (b *Broker) unpark(p *peer, id uint64) {
	p.pending--
	if id != 0 {
		delete(p.waits, id)
	}
}

// unwait drops the wait w for e's holders, unanswered.
func (b *Broker) unwait(e *entry, w *waiter) {
	if w.done {
		return
	}
	w.done = true
	w.timer.Stop()
	e.waiters = slices.DeleteFunc(e.waiters, func(x *waiter) bool { return x == w })
	b.unpark(w.p, w.id)
}

// hold makes p a holder of e once more.
func (b *Broker) hold(p *peer, e *entry) {
	if e.holders[p.rank] == 0 {
		p.held++
	}
	e.holders[p.rank]++
	p.entries[e] = struct{}{}
}

// unhold drops one of p's holds on e.
func (b *Broker) unhold(p *peer, e *entry) {
	if e.holders[p.rank]--; e.holders[p.rank] <= 0 {
		delete(e.holders, p.rank)
		p.held--
		if !e.given[p.rank] && e.owner != p {
			delete(p.entries, e) // a launcher's handle it opened
		}
	}
}

// tidy forgets q once nothing is in it or waits on it, and nothing got
// from it waits to be marked done.
func (b *Broker) tidy(q *queue) {
	if len(q.items)+len(q.getters)+len(q.putters)+len(q.joiners) != 0 || q.unfinished != 0 || b.queues[q.ref.ID] != q {
		return
	}
	delete(b.queues, q.ref.ID)
	if q.creator != nil {
		q.creator.queues--
	}
}

// publish records a new handle produced by p.
func (b *Broker) publish(p *peer, body []byte, files []*os.File) (Handle, error) {
	rank := p.rank
	if len(body) < 1 {
		return Handle{}, fmt.Errorf("%w: short publish", errBadRequest)
	}
	if rank != ParentRank && p.held >= b.limits.Handles {
		return Handle{}, limitErr(rank, "holds too many handles to publish more", b.limits.Handles, EnvMaxHandles)
	}
	kind := Kind(body[0])
	e := &entry{holders: map[int]int{}, given: map[int]bool{rank: true}, public: rank == ParentRank}
	switch kind {
	case KindHost, KindFD:
		if len(files) != 1 || len(body) < 9 {
			return Handle{}, fmt.Errorf("%w: a %s handle needs one descriptor and a size", errBadRequest, kind)
		}
		if rank != ParentRank && p.fds >= b.limits.FDs {
			return Handle{}, limitErr(rank, fmt.Sprintf("the launcher keeps %d descriptors for its buffers", p.fds), b.limits.FDs, EnvMaxFDs)
		}
		size := int64(binary.LittleEndian.Uint64(body[1:]))
		if len(body) > 9 {
			if len(body) > 10 || body[9]&^publishNotifyFree != 0 {
				return Handle{}, fmt.Errorf("%w: unknown publish flags", errBadRequest)
			}
			if body[9]&publishNotifyFree != 0 {
				e.notify = p
			}
		}
		if kind == KindHost {
			if err := checkSealed(files[0], size); err != nil {
				return Handle{}, err
			}
		}
		e.file, files[0] = files[0], nil // kept: not closed with the frame
		e.h.Size = size
		e.owner = p
		p.fds++
	case KindProducerOwned:
		if len(files) != 0 || len(body)-1 > MaxBlob || len(body) == 1 {
			return Handle{}, fmt.Errorf("%w: a producer-owned handle is a blob of 1..%d bytes, no descriptor", errBadRequest, MaxBlob)
		}
		e.blob = slices.Clone(body[1:])
		e.h.Size = int64(len(e.blob))
	default:
		return Handle{}, fmt.Errorf("%w: unknown kind %d", errBadRequest, kind)
	}
	b.nextID++
	e.h.ID, e.h.Kind, e.h.Producer = b.nextID, kind, int32(rank)
	if err := randomBytes(e.h.Token[:]); err != nil {
		if e.owner != nil {
			p.fds-- // not kept after all: the frame's files close it
			files[0], e.file = e.file, nil
		}
		return Handle{}, err
	}
	b.handles[e.h.ID] = e
	b.hold(p, e)
	return e.h, nil
}

// lookup finds the handle at the start of body and checks that it is
// genuine and that rank may use it.
func (b *Broker) lookup(rank int, body []byte) (*entry, error) {
	h, err := DecodeHandle(body)
	if err != nil {
		return nil, err
	}
	e := b.handles[h.ID]
	if e == nil || subtle.ConstantTimeCompare(e.h.Token[:], h.Token[:]) != 1 || e.h != h {
		return nil, fmt.Errorf("%w: %s is unknown, forged or already freed", ErrBadHandle, h)
	}
	if !e.public && !e.given[rank] {
		return nil, fmt.Errorf("%w: %s was never given to rank %d", ErrBadHandle, h, rank)
	}
	return e, nil
}

// put queues a message, or parks the putter while the queue is full. A
// putter with id 0 gets no reply.
func (b *Broker) put(p *peer, id uint64, body []byte, out []outFrame) ([]outFrame, error) {
	ref, rest, err := cutQueueRef(body)
	if err != nil {
		return out, err
	}
	pin, err := b.pin(p, len(body))
	if err != nil {
		return out, err
	}
	defer pin.done()
	q, err := b.queue(p, ref)
	if err != nil {
		return out, err
	}
	if q.full() {
		if err := b.park(p, id, q, nil); err != nil {
			b.tidy(q)
			return out, err
		}
	} else {
		p.pending++ // taken in by pump at once
		if id != 0 {
			if _, dup := p.waits[id]; dup {
				p.pending--
				b.tidy(q)
				return out, fmt.Errorf("%w: request id %d is waiting already", errBadRequest, id)
			}
			p.waits[id] = wait{q: q}
		}
	}
	m, err := b.message(p, rest, pin)
	if err != nil {
		b.unpark(p, id)
		b.tidy(q)
		return out, err
	}
	q.putters = append(q.putters, pendingPut{pending{p, id}, m})
	return b.pump(q, out), nil
}

// putBatch queues every message of a batch; nobody is answered.
func (b *Broker) putBatch(p *peer, body []byte, out []outFrame) ([]outFrame, error) {
	ref, rest, err := cutQueueRef(body)
	if err != nil {
		return out, err
	}
	items, err := splitBatch(rest)
	if err != nil {
		return out, err
	}
	pin, err := b.pin(p, len(body))
	if err != nil {
		return out, err
	}
	defer pin.done()
	q, err := b.queue(p, ref)
	if err != nil {
		return out, err
	}
	for _, raw := range items {
		if q.ref.Cap != 0 || len(q.putters) != 0 {
			// Only a bounded queue makes a batched put wait.
			if err := b.park(p, 0, q, nil); err != nil {
				return b.pump(q, out), err
			}
		}
		m, err := b.message(p, raw, pin)
		if err != nil {
			if q.ref.Cap != 0 || len(q.putters) != 0 {
				b.unpark(p, 0)
			}
			return b.pump(q, out), err
		}
		if q.ref.Cap == 0 && len(q.putters) == 0 {
			q.items = append(q.items, m) // unbounded: straight in
			q.unfinished++
			continue
		}
		q.putters = append(q.putters, pendingPut{pending{p, 0}, m})
	}
	return b.pump(q, out), nil
}

// message checks a message a rank puts: it may only send handles it holds,
// and the queue then holds them until a rank gets the message.
func (b *Broker) message(p *peer, raw []byte, pin *pinned) (message, error) {
	hs, value, err := cutMessage(raw)
	if err != nil {
		return message{}, err
	}
	for _, h := range hs {
		e, err := b.lookup(p.rank, AppendHandle(nil, h))
		if err != nil {
			return message{}, err
		}
		if e.holders[p.rank] == 0 {
			return message{}, fmt.Errorf("%w: rank %d puts %s it does not hold", ErrBadHandle, p.rank, h)
		}
	}
	for _, h := range hs {
		b.handles[h.ID].queued++
	}
	// value points into the request frame's payload, which nobody else
	// uses: kept as it is, not copied, and charged to p while it is kept.
	pin.refs++
	return message{hs, value, pin}, nil
}

// queue returns the queue ref names, creating it for p on first use,
// within p's limit.
func (b *Broker) queue(p *peer, ref queueRef) (*queue, error) {
	q := b.queues[ref.ID]
	if q == nil {
		if p.rank != ParentRank && p.queues >= b.limits.Queues {
			return nil, limitErr(p.rank, fmt.Sprintf("%d queues it created exist", p.queues), b.limits.Queues, EnvMaxQueues)
		}
		q = &queue{ref: ref, creator: p}
		p.queues++
		b.queues[ref.ID] = q
	}
	return q, nil
}

// full reports whether a put on q must wait for room.
func (q *queue) full() bool {
	return len(q.putters) > 0 || (q.ref.Cap != 0 && len(q.items) >= int(q.ref.Cap))
}

// pump moves a queue forward: waiting putters into free room, items to
// waiting getters, and releases joiners when every item is done.
func (b *Broker) pump(q *queue, out []outFrame) []outFrame {
	for {
		moved := false
		for len(q.putters) > 0 && (q.ref.Cap == 0 || len(q.items) < int(q.ref.Cap)) {
			pp := q.putters[0]
			q.putters = q.putters[1:]
			q.items = append(q.items, pp.msg)
			q.unfinished++
			b.unpark(pp.p, pp.id)
			if pp.id != 0 {
				out = append(out, outFrame{p: pp.p, f: Frame{Type: FrameReply, ID: pp.id}})
			}
			moved = true
		}
		for len(q.getters) > 0 && len(q.items) > 0 {
			g := q.getters[0]
			// Share what is there among the ranks waiting.
			n := min(g.max, (len(q.items)+len(q.getters)-1)/len(q.getters))
			q.getters = q.getters[1:]
			b.unpark(g.p, g.id)
			size := 0
			for _, m := range q.items[:n] {
				size += 6 + len(m.handles)*HandleSize + len(m.value)
			}
			payload := make([]byte, 0, size)
			for _, m := range q.items[:n] {
				for _, h := range m.handles {
					e := b.handles[h.ID]
					e.queued--
					e.given[g.p.rank] = true
					b.hold(g.p, e)
				}
				if g.batch {
					payload = appendBatchItem(payload, appendMessage(nil, m.handles, m.value))
				} else {
					payload = appendMessage(payload, m.handles, m.value)
				}
				m.unpin()
			}
			clear(q.items[:n]) // let the collector have what was sent
			q.items = q.items[n:]
			out = append(out, outFrame{p: g.p, f: Frame{Type: FrameReply, ID: g.id, Payload: payload}})
			moved = true
		}
		if !moved {
			break
		}
	}
	if q.unfinished == 0 {
		for _, j := range q.joiners {
			b.unpark(j.p, j.id)
			out = append(out, outFrame{p: j.p, f: Frame{Type: FrameReply, ID: j.id}})
		}
		q.joiners = nil
	}
	b.tidy(q)
	return out
}

// settle frees an entry nobody holds, and answers producers waiting for
// their handle to be unheld.
func (b *Broker) settle(e *entry, out []outFrame) []outFrame {
	others := e.otherHolders()
	if len(others) == 0 && e.queued == 0 {
		for _, w := range e.waiters {
			if !w.done {
				w.done = true
				w.timer.Stop()
				b.unpark(w.p, w.id)
				out = append(out, outFrame{p: w.p, f: Frame{Type: FrameReply, ID: w.id}})
			}
		}
		e.waiters = nil
	}
	if e.held() == 0 {
		out = b.free(e, out)
	}
	return out
}

// usable finds the handle at the start of body for rank to open or check:
// genuine, held by rank (or the launcher's), and not gone with its
// producer.
func (b *Broker) usable(rank int, body []byte) (*entry, error) {
	e, err := b.lookup(rank, body)
	if err != nil {
		return nil, err
	}
	if err := e.heldBy(rank); err != nil {
		return nil, err
	}
	if e.gone {
		return nil, fmt.Errorf("%w: %s", ErrProducerGone, e.h)
	}
	return e, nil
}

// heldBy checks that rank may use e now: it holds it (a rank that
// released a handle cannot open it again), or e is the launcher's.
func (e *entry) heldBy(rank int) error {
	if e.public || e.holders[rank] > 0 {
		return nil
	}
	return fmt.Errorf("%w: %s is not held by rank %d (released?)", ErrBadHandle, e.h, rank)
}

// otherHolders lists the ranks other than the producer holding e.
func (e *entry) otherHolders() []int {
	var rs []int
	for r, n := range e.holders {
		if n > 0 && r != int(e.h.Producer) {
			rs = append(rs, r)
		}
	}
	sort.Ints(rs)
	return rs
}

func (e *entry) held() int {
	n := e.queued
	for _, c := range e.holders {
		n += c
	}
	return n
}

// free forgets an entry and closes its descriptor, and tells its producer
// if it asked to be told.
func (b *Broker) free(e *entry, out []outFrame) []outFrame {
	if e.file != nil {
		e.file.Close()
		if e.owner != nil {
			e.owner.fds--
		}
	}
	delete(b.handles, e.h.ID)
	for r := range e.given {
		if p := b.peers[r]; p != nil {
			delete(p.entries, e)
		}
	}
	if e.owner != nil {
		delete(e.owner.entries, e)
	}
	// Only the producer's own channel: not a rank attached later under
	// its number (a Pool worker's replacement).
	if p := e.notify; p != nil && b.peers[p.rank] == p {
		out = append(out, outFrame{p: p, f: Frame{Type: FrameNotice, Payload: AppendHandle([]byte{noticeFreed}, e.h)}})
	}
	return out
}

// expire answers a producer whose wait timed out with the ranks still
// holding its handle.
func (b *Broker) expire(e *entry, w *waiter) {
	b.mu.Lock()
	if w.done {
		b.mu.Unlock()
		return
	}
	w.done = true
	e.waiters = slices.DeleteFunc(e.waiters, func(x *waiter) bool { return x == w })
	b.unpark(w.p, w.id)
	var payload []byte
	for _, r := range e.otherHolders() {
		payload = binary.LittleEndian.AppendUint32(payload, uint32(int32(r)))
	}
	if e.queued > 0 && len(payload) == 0 {
		// Nobody has it yet, but queued messages name it: report the
		// launcher as the holder rather than nobody.
		payload = binary.LittleEndian.AppendUint32(payload, ^uint32(0)) // ParentRank, -1
	}
	b.mu.Unlock()
	b.send([]outFrame{{p: w.p, f: Frame{Type: FrameReply, ID: w.id, Payload: payload}}})
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
	var out []outFrame
	p.stop(p) // it has exited: what is still queued for it is dropped
	delete(b.peers, rank)
	var queues []*queue
	for _, wt := range p.waits {
		if wt.w != nil {
			b.unwait(wt.e, wt.w)
			continue
		}
		q := wt.q
		q.getters = slices.DeleteFunc(q.getters, func(g getter) bool { return g.p == p })
		q.joiners = slices.DeleteFunc(q.joiners, func(j pending) bool { return j.p == p })
		for i := range q.putters {
			if q.putters[i].p == p {
				q.putters[i].id = 0 // still delivered, but nobody to answer
			}
		}
		queues = append(queues, q)
	}
	clear(p.waits)
	for _, q := range queues {
		b.tidy(q)
	}
	for e := range p.entries {
		delete(e.holders, rank)
		delete(e.given, rank)
		if e.h.Kind == KindProducerOwned && int(e.h.Producer) == rank && !e.gone {
			e.gone = true
			for _, r := range e.otherHolders() {
				if p := b.peers[r]; p != nil {
					out = append(out, outFrame{p: p, f: Frame{Type: FrameNotice, Payload: AppendHandle([]byte{noticeProducerGone}, e.h)}})
				}
			}
		}
		if b.handles[e.h.ID] == e {
			out = b.settle(e, out)
		}
	}
	clear(p.entries)
	b.mu.Unlock()
	b.send(out)
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

// Publish publishes f (a memfd or another descriptor the kernel counts) of
// size bytes from the launcher itself: every rank attached to the broker
// may open it. The broker keeps its own duplicate of f; the caller keeps f.
// The launcher holds the handle until it calls Release.
func (b *Broker) Publish(kind Kind, f *os.File, size int64) (Handle, error) {
	dup, err := dupFile(f)
	if err != nil {
		return Handle{}, err
	}
	body := binary.LittleEndian.AppendUint64([]byte{byte(kind)}, uint64(size))
	files := []*os.File{dup}
	b.mu.Lock()
	defer b.mu.Unlock()
	defer closeFiles(files)
	if b.closed {
		return Handle{}, ErrBrokerClosed
	}
	return b.publish(b.parent, body, files)
}

// Release drops the launcher's hold on a handle it published.
func (b *Broker) Release(h Handle) error {
	b.mu.Lock()
	e, err := b.lookup(ParentRank, AppendHandle(nil, h))
	if err == nil && e.holders[ParentRank] == 0 {
		err = fmt.Errorf("%w: %s is not held by the launcher", ErrBadHandle, h)
	}
	var out []outFrame
	if err == nil {
		b.unhold(b.parent, e)
		out = b.settle(e, nil)
	}
	b.mu.Unlock()
	b.send(out)
	return err
}
