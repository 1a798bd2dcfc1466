//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// FuzzBroker drives a broker with small limits through a sequence of
// requests from three ranks, decoded from the fuzzer's bytes: publishes,
// puts and gets (with handles), cancels, releases, waits for holders,
// task-dones, joins, opens, raw requests of any op, and ranks that exit
// and come back. After every step each rank's counts (waiting requests,
// handles held, descriptors, queues) must match the broker's state, and
// once every rank has exited nothing may wait and no handle may live but
// those still in queues.
func FuzzBroker(f *testing.F) {
	f.Add([]byte{1, 0, 2, 0, 0, 5, 1, 3, 1, 5, 1, 9})
	f.Add([]byte{3, 0, 7, 1, 4, 0, 1, 3, 1, 7, 2, 3, 2, 7, 2, 4, 1, 2})
	f.Add([]byte{1, 1, 6, 1, 0, 1, 2, 1, 0, 3, 1, 6, 1, 0, 0, 9, 1, 5, 1, 0})
	f.Add([]byte{11, 0, 3, 5, 1, 2, 1, 0, 8, 2, 1, 3, 0, 1, 7, 0, 1, 3, 0, 1})
	f.Add([]byte{0, 0, 4, opGet, 0, 0, 0, 0, 0, 5, opCancel, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(fuzzBroker)
}

// fuzzBroker is FuzzBroker's body.
func fuzzBroker(t *testing.T, data []byte) {
	b := NewBroker(WithLimits(Limits{Handles: 3, FDs: 2, Pending: 3, Queues: 3, QueuedBytes: 200}))
	defer b.Close()
	conns := map[int]*Conn{}
	attach := func(r int) {
		parent, child, err := Pair()
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = io.Copy(io.Discard, child); child.Close() }() // the rank reads everything
		if err := b.Attach(r, parent); err != nil {
			t.Fatal(err)
		}
		conns[r] = parent
	}
	detach := func(r int) {
		b.Detach(r, conns[r])
		conns[r].Close()
	}
	for r := range 3 {
		attach(r)
	}
	var handles []Handle
	next := func() byte {
		if len(data) == 0 {
			return 0
		}
		c := data[0]
		data = data[1:]
		return c
	}
	handle := func() Handle {
		if len(handles) == 0 {
			return Handle{ID: 1, Kind: KindHost}
		}
		return handles[int(next())%len(handles)]
	}
	queue := func() []byte {
		c := next()
		return appendQueueRef(nil, queueRef{ID: uint64(c % 4), Cap: uint32(c / 4 % 3)})
	}
	for len(data) > 0 {
		op, r, id := next()%12, int(next()%3), uint64(next()%8)
		var body []byte
		switch op {
		case 0: // any request
			n := int(next())
			body = data[:min(n, len(data))]
			data = data[len(body):]
		case 1:
			body = []byte{opPublish, byte(KindProducerOwned), next()}
		case 2:
			body = appendMessage(append([]byte{opPut}, queue()...), []Handle{handle()}, []byte{next()})
		case 3:
			body = append([]byte{opGet}, queue()...)
		case 4:
			body = binary.LittleEndian.AppendUint64([]byte{opCancel}, id)
		case 5:
			body = appendHandle([]byte{opRelease}, handle())
		case 6:
			timeout := uint32(0)
			if next()%2 == 1 {
				timeout = 1 << 31
			}
			body = binary.LittleEndian.AppendUint32(appendHandle([]byte{opWaitUnheld}, handle()), timeout)
		case 7:
			body = append([]byte{opTaskDone}, queue()...)
		case 8:
			body = append([]byte{opJoin}, queue()...)
		case 9:
			detach(r)
			attach(r)
			checkCounts(t, b)
			continue
		case 10:
			body = appendHandle([]byte{opOpen}, handle())
		case 11:
			body = binary.LittleEndian.AppendUint16(append([]byte{opGetBatch}, queue()...), uint16(next()))
		}
		b.mu.Lock()
		req := &request{p: b.peers[r], id: id}
		err := error(nil)
		if len(body) > 0 {
			req.body = body[1:]
			err = b.serve(req, body[0])
		}
		out := req.out
		for _, o := range out {
			if o.f.Type == FrameReply && len(o.f.Payload) == handleSize && err == nil && op == 1 {
				if h, err := decodeHandle(o.f.Payload); err == nil {
					handles = append(handles, h)
				}
			}
		}
		b.mu.Unlock()
		b.send(out)
		checkCounts(t, b)
	}
	for r := range 3 {
		detach(r)
	}
	checkCounts(t, b)
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, q := range b.queues {
		if len(q.getters)+len(q.joiners) != 0 {
			t.Errorf("queue %d: %d gets and %d joins wait after every rank exited", id, len(q.getters), len(q.joiners))
		}
		if len(q.items)+len(q.putters) == 0 && q.unfinished == 0 {
			t.Errorf("queue %d is empty and done, but kept", id)
		}
	}
	for _, e := range b.handles {
		if e.queued == 0 || len(e.holders) != 0 || len(e.waiters) != 0 {
			t.Errorf("%s lives after every rank exited: queued %d, holders %v, %d waiters", e.h, e.queued, e.holders, len(e.waiters))
		}
	}
}

// checkCounts checks each attached rank's counts against the broker's
// state.
func checkCounts(t *testing.T, b *Broker) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for r, p := range b.peers {
		pending, queues, queued := 0, 0, 0
		pins := map[*pinned]bool{}
		pin := func(m message) {
			if m.pin != nil && m.pin.from == p && !pins[m.pin] {
				pins[m.pin] = true
				queued += m.pin.size
			}
		}
		for _, q := range b.queues {
			if q.creator == p {
				queues++
			}
			for _, m := range q.items {
				pin(m)
			}
			for _, pp := range q.putters {
				pin(pp.msg)
			}
			for _, g := range q.getters {
				pending += count(g.p == p)
			}
			for _, j := range q.joiners {
				pending += count(j.p == p)
			}
			for _, pp := range q.putters {
				pending += count(pp.p == p)
			}
		}
		held, fds := 0, 0
		for _, e := range b.handles {
			for _, w := range e.waiters {
				pending += count(w.p == p && !w.done)
			}
			held += count(e.holders[r] > 0)
			fds += count(e.owner == p && e.file != nil)
			if (e.holders[r] > 0 || e.given[r]) && !has(p.entries, e) {
				t.Fatalf("rank %d holds or was given %s, but does not list it", r, e.h)
			}
		}
		if p.pending != pending || p.held != held || p.fds != fds || p.queues != queues || p.queued != queued {
			t.Fatalf("rank %d counts pending %d, held %d, fds %d, queues %d, queued bytes %d; the broker has %d, %d, %d, %d, %d",
				r, p.pending, p.held, p.fds, p.queues, p.queued, pending, held, fds, queues, queued)
		}
		if len(p.waits) > pending {
			t.Fatalf("rank %d indexes %d waiting requests; %d wait", r, len(p.waits), pending)
		}
	}
}

func count(b bool) int {
	if b {
		return 1
	}
	return 0
}

func has(m map[*entry]struct{}, e *entry) bool { _, ok := m[e]; return ok }

// FuzzClientFrames sends a Client, waiting for the reply to its request,
// one frame of any type, id and payload from the broker's side, then ends
// the channel: the request returns (it never hangs), a protocol error frame
// (any id) makes it fail with ErrProtocol, and a later request fails too.
func FuzzClientFrames(f *testing.F) {
	f.Add(uint8(FrameError), uint64(0), append([]byte{errCodeProtocol}, "ipc: protocol violation: flags"...))
	f.Add(uint8(FrameError), uint64(1), append([]byte{errCodeLimit}, "ipc: limit reached"...))
	f.Add(uint8(FrameError), uint64(0), []byte{errCodeBadRequest})
	f.Add(uint8(FrameReply), uint64(1), []byte{})
	f.Add(uint8(FrameNotice), uint64(0), appendHandle([]byte{noticeProducerGone}, Handle{ID: 1, Kind: KindHost}))
	f.Fuzz(func(t *testing.T, typ uint8, id uint64, payload []byte) {
		if typ == 0 {
			return
		}
		parent, child := pair(t)
		c := NewClient(child, 0)
		got := make(chan error, 1)
		go func() {
			_, err := c.request(context.Background(), []byte{opCheck})
			got <- err
		}()
		if _, err := parent.ReadFrame(); err != nil {
			t.Fatal(err)
		}
		if err := parent.WriteFrame(Frame{Type: FrameType(typ), ID: id, Payload: payload}); err != nil {
			t.Fatal(err)
		}
		parent.Close()
		err := <-got
		protocol := FrameType(typ) == FrameError && len(payload) > 0 && payload[0] == errCodeProtocol
		if protocol && !errors.Is(err, ErrProtocol) {
			t.Errorf("request after a protocol error frame = %v; want ErrProtocol", err)
		}
		<-c.done
		if _, err := c.request(context.Background(), []byte{opCheck}); err == nil {
			t.Error("request after the channel ended succeeded")
		} else if protocol && !errors.Is(err, ErrProtocol) {
			t.Errorf("later request = %v; want ErrProtocol", err)
		}
	})
}
