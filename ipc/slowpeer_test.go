//go:build linux

package ipc

import (
	"context"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/codec"
)

// TestNonReadingRankStallsNobody: a rank that asks for many values and
// never reads its channel does not stall the producer whose puts answer
// it, nor the consumer after it: the broker writes to each rank from a
// writer of its own. Bound: the producer's next synchronous request and
// the consumer's gets complete within 10 s (they take milliseconds); before,
// the producer's reader blocked for good writing the hog's replies.
func TestNonReadingRankStallsNobody(t *testing.T) {
	b := NewBroker()
	defer b.Close()
	hog, endHog := serveConn(t, b, 5)
	defer endHog()
	prodConn, endProd := serveConn(t, b, 1)
	defer endProd()
	consConn, endCons := serveConn(t, b, 2)
	defer endCons()

	data := Queue[[]byte]{ID: 7}
	marker := Queue[int]{ID: 8}
	// The hog asks for 100 values (6.4 MB of replies: more than its socket
	// holds), never reads, and then leaves a marker: once the consumer has
	// the marker, every Get of the hog is waiting in the broker.
	for i := range 100 {
		if err := hog.WriteFrame(Frame{Type: FrameRequest, ID: uint64(i + 1), Payload: appendQueueRef([]byte{opGet}, data.ref())}); err != nil {
			t.Fatal(err)
		}
	}
	mark, err := codec.AppendSlice([]byte{valueInline}, []int{1})
	if err != nil {
		t.Fatal(err)
	}
	if err := hog.WriteFrame(Frame{Type: FrameRequest, ID: 1000, Payload: appendMessage(appendQueueRef([]byte{opPut}, marker.ref()), nil, mark)}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	producer, consumer := NewClient(prodConn, 1), NewClient(consConn, 2)
	pctx, cctx := WithClient(ctx, producer), WithClient(ctx, consumer)
	if _, err := marker.Get(cctx); err != nil {
		t.Fatalf("marker: %v", err)
	}
	value := make([]byte, 64<<10)
	for range 110 {
		if err := data.Put(pctx, value); err != nil {
			t.Fatalf("put: %v", err)
		}
	}
	// A request that needs the producer's reader: it answers only if that
	// reader is not stuck writing to the hog.
	bounded := Queue[int]{ID: 9, Capacity: 4}
	if err := bounded.Put(pctx, 1); err != nil {
		t.Fatalf("the producer stalled behind a rank that does not read: %v", err)
	}
	for i := range 10 {
		if v, err := data.Get(cctx); err != nil || len(v) != len(value) {
			t.Fatalf("consumer get %d: %d bytes, %v; want %d", i, len(v), err, len(value))
		}
	}
	producer.Close(ctx, 0)
	consumer.Close(ctx, 0)
}
