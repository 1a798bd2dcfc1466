package ipc

import (
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"sort"
)

// The broker's handles: what each names, who holds it, who was given it,
// and who waits for it to be unheld. A handle lives while anyone holds it
// or a queued message names it; then free closes its descriptor.

// handleTable is the broker's handles, by id.
type handleTable map[uint64]*entry

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

// servePublish answers opPublish: the new handle.
func (b *Broker) servePublish(r *request) error {
	h, err := b.publish(r.p, r.body, r.files)
	if err != nil {
		return err
	}
	r.reply(appendHandle(nil, h))
	return nil
}

// serveOpen answers opOpen: a duplicate of the handle's descriptor, or its
// blob. A rank that opens a launcher's handle holds it from then on.
func (b *Broker) serveOpen(r *request) error {
	p := r.p
	e, err := b.usable(p.rank, r.body)
	if err != nil {
		return err
	}
	if e.public && p.rank != ParentRank {
		if e.holders[p.rank] == 0 && p.held >= b.limits.Handles {
			return limitErr(p.rank, "holds too many handles", b.limits.Handles, EnvMaxHandles)
		}
		b.hold(p, e) // released by the rank's Close, or its exit
	}
	if e.file == nil {
		r.reply(e.blob)
		return nil
	}
	// A duplicate: e.file may be closed (freed) before the reply is
	// written, once the lock is released.
	dup, err := dupFile(e.file)
	if err != nil {
		return err
	}
	r.reply(nil, dup)
	r.out[len(r.out)-1].closeAfter = dup // once the reply is written
	return nil
}

// serveCheck answers opCheck: empty while the handle is usable.
func (b *Broker) serveCheck(r *request) error {
	if _, err := b.usable(r.p.rank, r.body); err != nil {
		return err
	}
	r.reply(nil)
	return nil
}

// serveRelease answers opRelease: one of the rank's holds is dropped.
func (b *Broker) serveRelease(r *request) error {
	p := r.p
	e, err := b.lookup(p.rank, r.body)
	if err != nil {
		return err
	}
	if e.holders[p.rank] == 0 {
		return fmt.Errorf("%w: %s is not held by rank %d (released twice?)", ErrBadHandle, e.h, p.rank)
	}
	b.unhold(p, e)
	r.out = b.settle(e, r.out)
	r.reply(nil)
	return nil
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
	var err error
	switch kind {
	case KindHost, KindFD:
		err = b.publishFile(p, e, kind, body, files)
	case KindProducerOwned:
		if len(files) != 0 || len(body)-1 > MaxBlob || len(body) == 1 {
			return Handle{}, fmt.Errorf("%w: a producer-owned handle is a blob of 1..%d bytes, no descriptor", errBadRequest, MaxBlob)
		}
		e.blob = slices.Clone(body[1:])
		e.h.Size = int64(len(e.blob))
	default:
		err = fmt.Errorf("%w: unknown kind %d", errBadRequest, kind)
	}
	if err != nil {
		return Handle{}, err
	}
	b.nextID++
	e.h.ID, e.h.Kind, e.h.Producer = b.nextID, kind, int32(rank)
	if err := randomBytes(e.h.Token[:]); err != nil {
		if e.owner != nil {
			p.fds-- // not kept after all: the frame's files close it
			b.all.fds--
			files[0], e.file = e.file, nil
		}
		return Handle{}, err
	}
	b.handles[e.h.ID] = e
	b.hold(p, e)
	return e.h, nil
}

// publishFile fills e, a host or fd handle p publishes: its descriptor
// (taken from files, so that it is not closed with the frame), size and
// flags, within p's limit.
func (b *Broker) publishFile(p *peer, e *entry, kind Kind, body []byte, files []*os.File) error {
	if len(files) != 1 || len(body) < 9 {
		return fmt.Errorf("%w: a %s handle needs one descriptor and a size", errBadRequest, kind)
	}
	if p.rank != ParentRank && p.fds >= b.limits.FDs {
		return limitErr(p.rank, fmt.Sprintf("the launcher keeps %d descriptors for its buffers", p.fds), b.limits.FDs, EnvMaxFDs)
	}
	if p.rank != ParentRank && b.all.fds >= b.limits.TotalFDs {
		return fdBudgetErr(p.rank, b.all.fds, b.limits.TotalFDs)
	}
	size := int64(binary.LittleEndian.Uint64(body[1:]))
	if len(body) > 9 {
		if len(body) > 10 || body[9]&^publishNotifyFree != 0 {
			return fmt.Errorf("%w: unknown publish flags", errBadRequest)
		}
		if body[9]&publishNotifyFree != 0 {
			e.notify = p
		}
	}
	if kind == KindHost {
		if err := checkSealed(files[0], size); err != nil {
			return err
		}
	}
	e.file, files[0] = files[0], nil // kept: not closed with the frame
	e.h.Size = size
	e.owner = p
	p.fds++
	b.all.fds++
	return nil
}

// lookup finds the handle at the start of body and checks that it is
// genuine and that rank may use it.
func (b *Broker) lookup(rank int, body []byte) (*entry, error) {
	h, err := decodeHandle(body)
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

// forget drops what p, which exited, had of e: its holds, and its right
// to receive it. A producer-owned handle p produced is gone, and whoever
// still holds it is told.
func (b *Broker) forget(p *peer, e *entry, out []outFrame) []outFrame {
	delete(e.holders, p.rank)
	delete(e.given, p.rank)
	if e.h.Kind == KindProducerOwned && int(e.h.Producer) == p.rank && !e.gone {
		e.gone = true
		for _, r := range e.otherHolders() {
			if holder := b.peers[r]; holder != nil {
				out = append(out, outFrame{p: holder, f: Frame{Type: FrameNotice, Payload: appendHandle([]byte{noticeProducerGone}, e.h)}})
			}
		}
	}
	if b.handles[e.h.ID] == e {
		out = b.settle(e, out)
	}
	return out
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

// held counts e's holds and the queued messages that name it.
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
			b.all.fds--
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
		out = append(out, outFrame{p: p, f: Frame{Type: FrameNotice, Payload: appendHandle([]byte{noticeFreed}, e.h)}})
	}
	return out
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
	e, err := b.lookup(ParentRank, appendHandle(nil, h))
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
