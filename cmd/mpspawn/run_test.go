//go:build linux

package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"go.uber.org/goleak"
)

// TestRunInProcess runs the CLI in this process and checks that nothing —
// goroutine, relay, guard waiter — outlives run.
func TestRunInProcess(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"success", []string{"--no-python", "--nproc-per-node", "3", "true"}, 0, ""},
		{"failure", []string{"--no-python", "--nproc-per-node", "2", "sh", "-c", "[ $RANK = 1 ] && exit 7; exec sleep 30"}, 7, "Root Cause"},
		{"usage", []string{"--nproc-per-node", "x", "--no-python", "true"}, 2, "mpspawn: error: --nproc-per-node"},
		{"forkserver", []string{"--start-method", "forkserver", "--preload", "json", "--nproc-per-node", "2", "-m", "this"}, 0, ""},
		{"forkserver preload", []string{"--start-method", "forkserver", "--preload", "no_such_module", "-m", "this"}, 2, "mpspawn: error: --preload no_such_module"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), proctest.IgnoreGuard)
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"mpspawn"}, tt.args...), &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("run(%q) = %d; want %d (stderr %q)", tt.args, code, tt.wantCode, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("run(%q) stderr = %q; want it to contain %q", tt.args, stderr.String(), tt.wantErr)
			}
		})
	}
}

func TestNormalizeArgs(t *testing.T) {
	tests := []struct{ in, want string }{
		{"mpspawn --nproc_per_node 2 train.py --log_dir x", "mpspawn --nproc-per-node 2 train.py --log_dir x"},
		{"mpspawn --master_port=1234 --no_python prog --run_id y", "mpspawn --master-port=1234 --no-python prog --run_id y"},
		{"mpspawn --log_dir --weird_dir t.py", "mpspawn --log-dir --weird_dir t.py"},
		{"mpspawn -- --nproc_per_node", "mpspawn -- --nproc_per_node"},
		{"mpspawn --unknown_flag t.py", "mpspawn --unknown_flag t.py"},
	}
	for _, tt := range tests {
		got := strings.Join(normalizeArgs(strings.Fields(tt.in)), " ")
		if got != tt.want {
			t.Errorf("normalizeArgs(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

// TestStdoutNobodyReads: with a stdout nobody reads (a pager left open, a
// frozen ssh session), the job still ends: mpspawn gives up on the
// console after its bounds, says so on stderr, and exits with the ranks'
// code.
func TestStdoutNobodyReads(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() // never read until the end
	defer w.Close()
	// 350 lines of 1000 bytes: more than the pipe and the console queue
	// take, little enough that the rank's own pipe holds the rest and it
	// exits.
	args := []string{"mpspawn", "--no-python", "--nproc-per-node", "1", "sh", "-c", `yes "$(head -c 999 /dev/zero | tr '\0' x)" | head -n 350`}
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(args, w, &stderr) }()
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(stderr.String(), "nobody is reading stdout") {
			t.Errorf("run = %d, stderr %q; want 0 and a warning that stdout was given up on", code, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("mpspawn did not end with a stdout nobody reads")
	}
	r.Close() // frees the console writer blocked in the pipe
}
