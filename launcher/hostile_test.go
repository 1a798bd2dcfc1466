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
	for _, method := range []string{MethodSpawn, MethodForkserver} {
		for _, tt := range tests {
			t.Run(method+"/"+tt.name, func(t *testing.T) {
				hostileErrorFile(t, method, tt.script, tt.message)
			})
		}
	}
}

// hostileErrorFile runs one rank of method that runs script (which makes
// $F, its error file) and exits 1, and checks what was read of $F.
func hostileErrorFile(t *testing.T, method, script, message string) {
	ef := filepath.Join(t.TempDir(), "error.json")
	spec := Spec{
		Path: "/bin/sh", Args: []string{"sh", "-c", script + "\nexit 1"},
		Env: append(os.Environ(), "F="+ef), ErrorFile: ef,
	}
	var opts Options
	if method == MethodForkserver {
		fs, python, rankScript := startForkserver(t)
		spec = pySpec(0, python, rankScript, "sh", script)
		spec.Env, spec.ErrorFile, opts.Method = append(spec.Env, "F="+ef), ef, fs
	}
	g, err := Start(context.Background(), []Spec{spec}, opts)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res := waitResult(t, g) // bounded: fails the test if it hangs
	got := res.Ranks[0].ErrorFile
	switch {
	case message == "" && got != nil:
		t.Errorf("ErrorFile = %.80q...; want none read", got.Message)
	case message != "" && (got == nil || !strings.HasPrefix(got.Message, message) || len(got.Message) > maxMessage+64 ||
		len(got.Traceback) > maxTraceback+64 || !strings.HasSuffix(got.Traceback, "END")):
		t.Errorf("ErrorFile = %+.80v; want the message and traceback's end, truncated", got)
	}
	t.Logf("ended in %v", time.Since(start))
}

// TestConsoleNobodyReads: a console whose reader never reads (a pager
// left open, a frozen ssh) does not keep the Group or the Output from
// ending: both give up after their bounds and say so.
func TestConsoleNobodyReads(t *testing.T) {
	for _, method := range []string{MethodSpawn, MethodForkserver} {
		t.Run(method, func(t *testing.T) { consoleNobodyReads(t, method) })
	}
}

func consoleNobodyReads(t *testing.T, method string) {
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
	opts := Options{Stop: StopOptions{DrainTimeout: 200 * time.Millisecond}}
	if method == MethodForkserver {
		fs, python, script := startForkserver(t)
		spec, opts.Method = pySpec(0, python, script, "print", "350", "993"), fs
	}
	spec.Stdout, spec.Stderr = stdout, stderr
	g, err := Start(context.Background(), []Spec{spec}, opts)
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
