//go:build linux

package ipc

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestPoolGetEndsWithChannel: a Get waiting for a buffer to come back
// returns once the control channel has ended (no buffer can come back
// then), rather than waiting for ever; before that, it waits. A buffer
// the rank had let go of but others still held is written off when the
// channel ends, making room for a new one.
func TestPoolGetEndsWithChannel(t *testing.T) {
	broker := NewBroker()
	parent, child := pair(t)
	if err := broker.Attach(0, parent); err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		for {
			f, err := parent.ReadFrame()
			if err != nil {
				broker.Detach(0, parent)
				return
			}
			broker.Handle(0, f)
		}
	}()
	c := NewClient(child, 0)
	ctx := WithClient(context.Background(), c)
	pool, err := c.NewBufferPool(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	kept, err := pool.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kept.Publish(ctx); err != nil { // held by this rank: it cannot come back
		t.Fatal(err)
	}
	sent, err := pool.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, err := sent.Publish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := (Queue[Handle]{ID: 5}).Put(ctx, h); err != nil { // the queue holds it
		t.Fatal(err)
	}
	if err := sent.Close(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := pool.Get(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with both buffers out: %v; want the deadline", err)
	}
	got := make(chan error, 1)
	go func() {
		b, err := pool.Get(ctx)
		if err == nil {
			b.Close(ctx)
		}
		got <- err
	}()
	parent.Close() // the launcher's end goes away
	<-served
	select {
	case err := <-got: // the written-off buffer's room, or the channel's end
		if err != nil && !errors.Is(err, ErrBrokerClosed) {
			t.Errorf("Get after the channel ended: %v; want a buffer or ErrBrokerClosed", err)
		}
	case <-time.After(10 * time.Second): // a bound, not a synchronisation
		t.Fatal("Get still waiting 10 s after the control channel ended")
	}
	<-c.done
	b, err := pool.Get(ctx)
	if err != nil {
		t.Fatalf("Get after the queued buffer was written off: %v; want a new buffer", err)
	}
	if _, err := pool.Get(ctx); !errors.Is(err, ErrBrokerClosed) {
		t.Errorf("Get with both buffers out after the channel ended: %v; want ErrBrokerClosed", err)
	}
	b.Close(ctx)
	// The message nobody got is the one leak left: the queue held it.
	if leaks := broker.Close(); len(leaks) != 1 || !strings.Contains(leaks[0], "1 queued messages") {
		t.Errorf("leaks after the rank detached: %q; want the queued buffer's", leaks)
	}
}
