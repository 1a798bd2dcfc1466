//go:build linux

package launcher

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostileErrorFile: whatever a rank leaves at its error-file path — a
// FIFO, a symlink to /dev/zero, a file of 256 MB, a huge message — the
// Group ends at once, reads at most 1 MiB, and keeps a bounded message.
func TestHostileErrorFile(t *testing.T) {
	huge := `{ printf '{"message": {"message": "'; head -c 100000 /dev/zero | tr '\0' x
		printf '", "extraInfo": {"py_callstack": "'; head -c 200000 /dev/zero | tr '\0' y
		printf 'END"}}}'; } > "$F"`
	tests := []struct {
		name    string
		script  string // makes $TORCHELASTIC_ERROR_FILE, then the rank exits 1
		message string // the kept message's start, "" for none
	}{
		{"fifo", `mkfifo "$F"`, ""},
		{"symlink to /dev/zero", `ln -s /dev/zero "$F"`, ""},
		{"256 MB", `truncate -s 256M "$F"`, ""},
		{"huge message", huge, "xxxx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ef := filepath.Join(t.TempDir(), "error.json")
			spec := Spec{
				Path: "/bin/sh", Args: []string{"sh", "-c", tt.script + "\nexit 1"},
				Env: append(os.Environ(), "F="+ef), ErrorFile: ef,
			}
			g, err := Start(context.Background(), []Spec{spec}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			res := waitResult(t, g) // bounded: fails the test if it hangs
			got := res.Ranks[0].ErrorFile
			switch {
			case tt.message == "" && got != nil:
				t.Errorf("ErrorFile = %.80q...; want none read", got.Message)
			case tt.message != "" && (got == nil || !strings.HasPrefix(got.Message, tt.message) || len(got.Message) > maxMessage+64 ||
				len(got.Traceback) > maxTraceback+64 || !strings.HasSuffix(got.Traceback, "END")):
				t.Errorf("ErrorFile = %+.80v; want the message and traceback's end, truncated", got)
			}
			t.Logf("ended in %v", time.Since(start))
		})
	}
}
