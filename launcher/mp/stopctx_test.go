//go:build linux

package mp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"
)

// idleFn reports that it runs, then sleeps without ever looking at its
// context.
var idleFn = Register("test.idle", func(context.Context, Rank, int) (int, error) {
	fmt.Println("running")
	time.Sleep(time.Hour)
	return 0, nil
})

// TestStopContext: a rank's context catches SIGTERM only once it is
// watched, and is then cancelled by it.
func TestStopContext(t *testing.T) {
	ctx := &stopContext{}
	defer ctx.release()
	if d, ok := ctx.Deadline(); ok || !d.IsZero() || ctx.Value(t) != nil {
		t.Fatalf("unwatched stopContext: Deadline = %v, %v; Value = %v; want none", d, ok, ctx.Value(t))
	}
	if ctx.ctx != nil {
		t.Fatal("Deadline or Value started catching signals; want only Done and Err to")
	}
	done := ctx.Done()
	if err := ctx.Err(); err != nil {
		t.Fatalf("Err() = %v before any signal; want nil", err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("SIGTERM did not cancel the watched context")
	}
	if !errors.Is(ctx.Err(), context.Canceled) || context.Cause(ctx) == nil {
		t.Errorf("after SIGTERM: Err() = %v, Cause = %v; want context.Canceled and a cause", ctx.Err(), context.Cause(ctx))
	}
}

// readyWriter closes ready at the first line its rank writes.
type readyWriter struct {
	ready chan struct{}
	buf   bytes.Buffer
}

func (w *readyWriter) Write(p []byte) (int, error) {
	if w.buf.Len() == 0 {
		close(w.ready)
	}
	return w.buf.Write(p)
}

// TestSpawnStopUnwatched: a rank whose function never looks at its context
// is ended by SIGTERM itself, without waiting out the grace period.
func TestSpawnStopUnwatched(t *testing.T) {
	out := &readyWriter{ready: make(chan struct{})}
	s, err := Spawn(context.Background(), idleFn, 1, 0, &Options{Stdout: out, Stderr: discard{}, GracePeriod: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	<-out.ready
	cause := errors.New("test stops it")
	s.Stop(cause)
	if _, err := s.Join(); !errors.Is(err, cause) {
		t.Fatalf("Join error = %v; want the stop cause", err)
	}
	if r := s.group.Wait().Ranks[0]; r.Signal != syscall.SIGTERM {
		t.Errorf("rank ended with %s; want SIGTERM", r.Status())
	}
}
