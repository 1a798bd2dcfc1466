package ipc

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// The broker's queues: the messages in each, the ranks waiting to get,
// to put (on a full queue) and to join. A queue exists while anything is
// in it or waits on it; pump moves it forward after every change.

// queueTable is the broker's queues, by id.
type queueTable map[uint64]*queue

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
	all  *totals // the broker's, charged too
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
		m.pin.all.queued -= m.pin.size
	}
}

// pin charges p for a put request's payload of size bytes, within its
// limit; the caller releases the charge with done once the messages made
// from it hold it (or none does).
func (b *Broker) pin(p *peer, size int) (*pinned, error) {
	if p.rank != ParentRank && p.queued+size > b.limits.QueuedBytes {
		return nil, limitErr(p.rank, fmt.Sprintf("%d bytes it put wait in queues", p.queued), b.limits.QueuedBytes, EnvMaxQueuedBytes)
	}
	if p.rank != ParentRank && b.all.queued+size > b.limits.TotalQueuedBytes {
		return nil, totalErr(p.rank, fmt.Sprintf("%d bytes all ranks put wait in queues", b.all.queued), b.limits.TotalQueuedBytes, EnvMaxTotalQueuedBytes)
	}
	p.queued += size
	b.all.queued += size
	b.all.peak = max(b.all.peak, b.all.queued)
	return &pinned{from: p, all: &b.all, size: size, refs: 1}, nil
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

// serveGet parks an opGet (or, batch, an opGetBatch) on its queue until
// pump answers it with a message (or several).
func (b *Broker) serveGet(r *request, batch bool) error {
	p := r.p
	ref, rest, err := cutQueueRef(r.body)
	if err != nil {
		return err
	}
	g := getter{pending: pending{p, r.id}, max: 1}
	if batch && len(rest) >= 2 {
		g.max, g.batch = max(int(binary.LittleEndian.Uint16(rest)), 1), true
	}
	if p.held >= b.limits.Handles && p.rank != ParentRank {
		return limitErr(p.rank, "holds too many handles to take more from a queue", b.limits.Handles, EnvMaxHandles)
	}
	q, err := b.parkOn(p, r.id, ref)
	if err != nil {
		return err
	}
	q.getters = append(q.getters, g)
	r.out = b.pump(q, r.out)
	return nil
}

// serveJoin parks an opJoin until every item put on its queue is done.
func (b *Broker) serveJoin(r *request) error {
	ref, _, err := cutQueueRef(r.body)
	if err != nil {
		return err
	}
	q, err := b.parkOn(r.p, r.id, ref)
	if err != nil {
		return err
	}
	q.joiners = append(q.joiners, pending{r.p, r.id})
	r.out = b.pump(q, r.out)
	return nil
}

// parkOn returns the queue ref names, with p's request id parked on it.
func (b *Broker) parkOn(p *peer, id uint64, ref queueRef) (*queue, error) {
	q, err := b.queue(p, ref)
	if err != nil {
		return nil, err
	}
	if err := b.park(p, id, q, nil); err != nil {
		b.tidy(q)
		return nil, err
	}
	return q, nil
}

// serveTaskDone answers opTaskDone: one item got from the queue is done.
func (b *Broker) serveTaskDone(r *request) error {
	ref, _, err := cutQueueRef(r.body)
	if err != nil {
		return err
	}
	q := b.queues[ref.ID]
	if q == nil || q.unfinished == 0 {
		return fmt.Errorf("%w: TaskDone called more times than items were put", errBadRequest)
	}
	q.unfinished--
	r.reply(nil)
	r.out = b.pump(q, r.out)
	return nil
}

// openPut is how put and putBatch begin: the queue named at the start of
// body, the rest of body, and p's charge for body (see pin), which the
// caller ends with done.
func (b *Broker) openPut(p *peer, body []byte) (*queue, []byte, *pinned, error) {
	ref, rest, err := cutQueueRef(body)
	if err != nil {
		return nil, nil, nil, err
	}
	pin, err := b.pin(p, len(body))
	if err != nil {
		return nil, nil, nil, err
	}
	q, err := b.queue(p, ref)
	if err != nil {
		pin.done()
		return nil, nil, nil, err
	}
	return q, rest, pin, nil
}

// servePut queues a message, or parks the putter while the queue is full.
// A putter with id 0 gets no reply.
func (b *Broker) servePut(r *request) error {
	p, id := r.p, r.id
	q, rest, pin, err := b.openPut(p, r.body)
	if err != nil {
		return err
	}
	defer pin.done()
	if q.full() {
		if err := b.park(p, id, q, nil); err != nil {
			b.tidy(q)
			return err
		}
	} else {
		p.pending++ // taken in by pump at once
		if id != 0 {
			if _, dup := p.waits[id]; dup {
				p.pending--
				b.tidy(q)
				return fmt.Errorf("%w: request id %d is waiting already", errBadRequest, id)
			}
			p.waits[id] = wait{q: q}
		}
	}
	m, err := b.message(p, rest, pin)
	if err != nil {
		b.unpark(p, id)
		b.tidy(q)
		return err
	}
	q.putters = append(q.putters, pendingPut{pending{p, id}, m})
	r.out = b.pump(q, r.out)
	return nil
}

// servePutBatch queues every message of a batch; nobody is answered.
func (b *Broker) servePutBatch(r *request) error {
	p := r.p
	q, rest, pin, err := b.openPut(p, r.body)
	if err != nil {
		return err
	}
	defer pin.done()
	items, err := splitBatch(rest)
	if err != nil {
		b.tidy(q)
		return err
	}
	defer func() { r.out = b.pump(q, r.out) }()
	for _, raw := range items {
		// Only a bounded queue (or one with putters already waiting)
		// makes a batched put wait.
		wait := q.ref.Cap != 0 || len(q.putters) != 0
		if wait {
			if err := b.park(p, 0, q, nil); err != nil {
				return err
			}
		}
		m, err := b.message(p, raw, pin)
		if err != nil {
			if wait {
				b.unpark(p, 0)
			}
			return err
		}
		if !wait {
			q.items = append(q.items, m) // unbounded: straight in
			q.unfinished++
			continue
		}
		q.putters = append(q.putters, pendingPut{pending{p, 0}, m})
	}
	return nil
}

// message checks a message a rank puts: it may only send handles it holds,
// and the queue then holds them until a rank gets the message.
func (b *Broker) message(p *peer, raw []byte, pin *pinned) (message, error) {
	hs, value, err := cutMessage(raw)
	if err != nil {
		return message{}, err
	}
	for _, h := range hs {
		e, err := b.lookup(p.rank, appendHandle(nil, h))
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

// pump moves a queue forward: waiting putters into free room, items to
// waiting getters, and releases joiners when every item is done.
func (b *Broker) pump(q *queue, out []outFrame) []outFrame {
	for {
		moved := false
		for len(q.putters) > 0 && (q.ref.Cap == 0 || len(q.items) < int(q.ref.Cap)) {
			pp := q.putters[0]
			q.putters = shrink(q.putters[1:])
			q.items = append(q.items, pp.msg)
			q.unfinished++
			b.unpark(pp.p, pp.id)
			if pp.id != 0 {
				out = append(out, outFrame{p: pp.p, f: Frame{Type: FrameReply, ID: pp.id}})
			}
			moved = true
		}
		for len(q.getters) > 0 && len(q.items) > 0 {
			out = b.give(q, out)
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

// give answers q's first getter with its share of the items: the
// getter's rank holds the handles in them from then on.
func (b *Broker) give(q *queue, out []outFrame) []outFrame {
	g := q.getters[0]
	// Share what is there among the ranks waiting.
	n := min(g.max, (len(q.items)+len(q.getters)-1)/len(q.getters))
	q.getters = shrink(q.getters[1:])
	b.unpark(g.p, g.id)
	size := 0
	for _, m := range q.items[:n] {
		size += 6 + len(m.handles)*handleSize + len(m.value)
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
	q.items = shrink(q.items[n:])
	return append(out, outFrame{p: g.p, f: Frame{Type: FrameReply, ID: g.id, Payload: payload}})
}

// shrink returns s, or nil once s is empty, so that a drained queue does
// not keep the backing array it grew to.
func shrink[S ~[]E, E any](s S) S {
	if len(s) == 0 {
		return nil
	}
	return s
}

// dropPending takes p's request id (a Get, a Join or a Put waiting for
// room) off q. The handles of a dropped put are queued no more: they are
// returned, for the caller to settle.
func (b *Broker) dropPending(q *queue, p *peer, id uint64) (dropped []*entry) {
	mine := func(x pending) bool { return x.p == p && x.id == id }
	q.getters = slices.DeleteFunc(q.getters, func(g getter) bool { return mine(g.pending) })
	q.joiners = slices.DeleteFunc(q.joiners, mine)
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
	return dropped
}

// dropPeer takes p, which exited, off q: its gets and joins are dropped;
// its puts are still delivered, but nobody is answered.
func (q *queue) dropPeer(p *peer) {
	q.getters = slices.DeleteFunc(q.getters, func(g getter) bool { return g.p == p })
	q.joiners = slices.DeleteFunc(q.joiners, func(j pending) bool { return j.p == p })
	for i := range q.putters {
		if q.putters[i].p == p {
			q.putters[i].id = 0
		}
	}
}
