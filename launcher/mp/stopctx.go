package mp

import (
	"context"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// stopContext is a rank's root context, cancelled by SIGTERM or SIGINT.
// Catching them costs a rank two OS threads (os/signal's receiver and the
// runtime's signal-mask thread), which made up most of what a no-op rank
// costs beyond the bare process, so they are caught only once the context
// is watched: from the first call to Done or Err, which every wait on it
// and every context derived from it (WithCancel, WithTimeout, AfterFunc)
// makes. Until then the signals keep their default action and end the
// rank, which could not have reacted to them anyway.
type stopContext struct {
	mu   sync.Mutex
	ctx  context.Context // nil until watched
	stop context.CancelFunc
}

var _ context.Context = (*stopContext)(nil)

// watched starts catching the signals, once, and returns the context they
// cancel.
func (c *stopContext) watched() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		c.ctx, c.stop = signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	}
	return c.ctx
}

// release stops catching the signals, if they were caught.
func (c *stopContext) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stop != nil {
		c.stop()
	}
}

// Deadline reports no deadline.
func (c *stopContext) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done starts catching the signals and returns a channel closed by the
// first of them.
func (c *stopContext) Done() <-chan struct{} { return c.watched().Done() }

// Err starts catching the signals and reports whether one came.
func (c *stopContext) Err() error { return c.watched().Err() }

// Value looks key up in the signal context once it is watched (which is
// how context.Cause finds the cause); before that there are no values.
func (c *stopContext) Value(key any) any {
	c.mu.Lock()
	ctx := c.ctx
	c.mu.Unlock()
	if ctx == nil {
		return nil
	}
	return ctx.Value(key)
}

// String names the context, as the standard library's contexts do.
func (c *stopContext) String() string { return "mp.stopContext" }
