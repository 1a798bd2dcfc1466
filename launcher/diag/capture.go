package diag

import (
	"io"
	"sync"
)

// A Capture passes a rank's stderr lines on to its writer and, once
// started, keeps them (up to 1 MiB): a Go rank's goroutine dump, which its
// runtime writes to stderr on SIGQUIT (see Take).
type Capture struct {
	w    io.Writer
	mu   sync.Mutex
	on   bool
	kept []byte
}

// NewCapture returns a Capture that writes to w (nil discards).
func NewCapture(w io.Writer) *Capture { return &Capture{w: w} }

// Write passes p on, and keeps it once the capture is started.
func (c *Capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.on && len(c.kept)+len(p) <= maxStack {
		c.kept = append(c.kept, p...)
	}
	c.mu.Unlock()
	if c.w == nil {
		return len(p), nil
	}
	return c.w.Write(p)
}

// Start keeps the lines written from now on.
func (c *Capture) Start() {
	c.mu.Lock()
	c.on = true
	c.mu.Unlock()
}

// Text is what was kept since Start.
func (c *Capture) Text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.kept)
}

// Abandon gives up on the writer, when it can be (see launcher.Output).
func (c *Capture) Abandon() {
	if a, ok := c.w.(interface{ Abandon() }); ok {
		a.Abandon()
	}
}
