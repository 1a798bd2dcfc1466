//go:build linux

package launcher

import (
	"context"
	"io"
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

// TestConsoleNobodyReads: a console whose reader never reads (a pager
// left open, a frozen ssh) does not keep the Group or the Output from
// ending: both give up after their bounds and say so.
func TestConsoleNobodyReads(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() // never read
	defer w.Close()
	out := &Output{Stdout: w, Stderr: io.Discard, DrainTimeout: 200 * time.Millisecond}
	stdout, stderr, err := out.Open(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// 350 lines of 1000 bytes: the console pipe takes 65, the queue 256, the
	// relay holds one and the rest fit in the rank's pipe, so the rank exits.
	spec := helperSpec(0, "print", "350", "1000")
	spec.Stdout, spec.Stderr = stdout, stderr
	g, err := Start(context.Background(), []Spec{spec}, Options{DrainTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, g)
	if !res.Succeeded() || !res.OutputStalled {
		t.Errorf("Result = succeeded %v, output stalled %v; want true, true", res.Succeeded(), res.OutputStalled)
	}
	closed := make(chan struct{})
	go func() {
		out.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		t.Fatal("Output.Close did not return")
	}
	if got := out.Stalled(); len(got) != 1 || got[0] != "stdout" {
		t.Errorf("Stalled() = %v; want [stdout]", got)
	}
	// The console writer is still blocked in the pipe: free it for goleak.
	r.Close()
	w.Close()
}
