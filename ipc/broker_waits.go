package ipc

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"
)

// A rank's waiting requests: each parked on a queue (a Get, a Put waiting
// for room, a Join) or on a handle (a producer waiting for its holders),
// indexed by request id so that a cancel or the rank's exit finds them
// without a scan. Every parked request counts against the rank's Pending
// limit until it is answered or dropped.

// waitSet is one rank's waiting requests, by request id.
type waitSet map[uint64]wait

// wait is where a waiting request is: on a queue (a Get, a Put waiting
// for room, a Join), or a wait for a handle's holders.
type wait struct {
	q *queue
	e *entry
	w *waiter
}

// waiter is a producer waiting (opWaitUnheld) for its handle's holders.
type waiter struct {
	p     *peer
	id    uint64
	timer *time.Timer
	done  bool
}

// serveCancel answers opCancel: the rank's waiting request is dropped.
func (b *Broker) serveCancel(r *request) error {
	if len(r.body) < 8 {
		return fmt.Errorf("%w: short cancel", errBadRequest)
	}
	r.out = b.cancel(r.p, binary.LittleEndian.Uint64(r.body), r.out)
	r.reply(nil)
	return nil
}

// serveWaitUnheld parks a producer's opWaitUnheld until nobody else holds
// its handle, or its timeout (see expire).
func (b *Broker) serveWaitUnheld(r *request) error {
	p, body := r.p, r.body
	e, err := b.lookup(p.rank, body)
	if err != nil {
		return err
	}
	if len(body) < handleSize+4 {
		return fmt.Errorf("%w: short wait", errBadRequest)
	}
	timeout := time.Duration(binary.LittleEndian.Uint32(body[handleSize:])) * time.Millisecond
	w := &waiter{p: p, id: r.id}
	if err := b.park(p, r.id, nil, &wait{e: e, w: w}); err != nil {
		return err
	}
	e.waiters = append(e.waiters, w)
	w.timer = time.AfterFunc(timeout, func() { b.expire(e, w) })
	r.out = b.settle(e, r.out)
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
	dropped := b.dropPending(wt.q, p, id)
	b.unpark(p, id)
	for _, e := range dropped {
		if b.handles[e.h.ID] == e { // not freed by an earlier one
			out = b.settle(e, out)
		}
	}
	b.tidy(wt.q)
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

// dropWaits drops every request p, which exited, waits with: its waits
// for holders and its gets and joins are dropped, its puts still
// delivered unanswered.
func (b *Broker) dropWaits(p *peer) {
	var queues []*queue
	for _, wt := range p.waits {
		if wt.w != nil {
			b.unwait(wt.e, wt.w)
			continue
		}
		wt.q.dropPeer(p)
		queues = append(queues, wt.q)
	}
	clear(p.waits)
	for _, q := range queues {
		b.tidy(q)
	}
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
