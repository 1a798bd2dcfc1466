package launcher

import (
	"strings"
	"testing"
)

// lineRecorder keeps every Write as one string.
type lineRecorder struct{ writes []string }

func (w *lineRecorder) Write(p []byte) (int, error) {
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

// TestRelayLines: each line reaches the writer whole, in one Write,
// whatever its length against the relay's buffer; a line over maxLine is
// written in maxLine pieces; a last line without a newline is kept.
func TestRelayLines(t *testing.T) {
	long := strings.Repeat("x", relayBuffer*3+7) + "\n"
	huge := strings.Repeat("y", maxLine+5) + "\n"
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"short lines", "a\nbc\n", []string{"a\n", "bc\n"}},
		{"buffer-sized line", strings.Repeat("z", relayBuffer-1) + "\n", []string{strings.Repeat("z", relayBuffer-1) + "\n"}},
		{"line over the buffer", "a\n" + long + "b\n", []string{"a\n", long, "b\n"}},
		{"line over maxLine", huge, []string{huge[:maxLine], huge[maxLine:]}},
		{"no trailing newline", "a\nrest", []string{"a\n", "rest"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w lineRecorder
			relayLines(strings.NewReader(tt.in), &w)
			if len(w.writes) != len(tt.want) {
				t.Fatalf("relayLines(%d bytes) made %d writes; want %d", len(tt.in), len(w.writes), len(tt.want))
			}
			for i := range tt.want {
				if w.writes[i] != tt.want[i] {
					t.Errorf("relayLines(%d bytes): write %d has %d bytes; want %d", len(tt.in), i, len(w.writes[i]), len(tt.want[i]))
				}
			}
		})
	}
}
