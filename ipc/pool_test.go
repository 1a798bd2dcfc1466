//go:build linux

package ipc

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestPoolGetEndsWithChannel: a Get waiting for a buffer to come back
// returns once the control channel has ended (no buffer can come back
// then), rather than waiting for ever; before that, it waits.
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
	ctx := context.Background()
	pool, err := c.NewBufferPool(4096, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	buf, err := pool.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := buf.Publish(ctx); err != nil { // held by this rank: it cannot come back
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := pool.Get(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with the only buffer out: %v; want the deadline", err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := pool.Get(ctx)
		got <- err
	}()
	parent.Close() // the launcher's end goes away
	<-served
	select {
	case err := <-got:
		if !errors.Is(err, ErrBrokerClosed) {
			t.Errorf("Get after the channel ended: %v; want ErrBrokerClosed", err)
		}
	case <-time.After(10 * time.Second): // a bound, not a synchronisation
		t.Fatal("Get still waiting 10 s after the control channel ended")
	}
	if leaks := broker.Close(); len(leaks) != 0 {
		t.Errorf("leaks after the rank detached: %q", leaks)
	}
}
