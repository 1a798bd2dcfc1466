package launcher

import (
	"io"
	"strings"
	"sync"
)

// tailLines is how many of a rank's last stderr lines a Tail keeps.
const tailLines = 64

// A Tail passes whole lines on to w (which may be nil) and keeps the last
// 64 of them: a rank's stderr, kept to say why it failed. Give it as
// Spec.Stderr, which writes one line per Write.
type Tail struct {
	w     io.Writer
	mu    sync.Mutex
	lines []string
}

// NewTail returns a Tail passing lines on to w.
func NewTail(w io.Writer) *Tail { return &Tail{w: w} }

// Write takes one line, as the launcher's relay writes them.
func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	if len(t.lines) == tailLines {
		t.lines = append(t.lines[:0], t.lines[1:]...)
	}
	t.lines = append(t.lines, strings.TrimSuffix(string(p), "\n"))
	t.mu.Unlock()
	if t.w == nil {
		return len(p), nil
	}
	return t.w.Write(p)
}

// String returns the kept lines.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// Abandon gives up on the writer the lines are passed on to, when it can
// be (see Output.Abandon).
func (t *Tail) Abandon() {
	if a, ok := t.w.(abandoner); ok {
		a.Abandon()
	}
}
