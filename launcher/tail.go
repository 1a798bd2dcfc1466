package launcher

import (
	"io"
	"strings"
	"sync"
)

// tailLines is how many of a rank's last stderr lines a RankError keeps.
const tailLines = 64

// tailWriter passes whole lines on to w (which may be nil) and keeps the
// last tailLines of them.
type tailWriter struct {
	w     io.Writer
	mu    sync.Mutex
	lines []string
}

func newTailWriter(w io.Writer) *tailWriter { return &tailWriter{w: w} }

// Write takes one line, as the launcher's relay writes them.
func (t *tailWriter) Write(p []byte) (int, error) {
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
func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}
