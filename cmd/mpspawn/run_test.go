//go:build linux

package main

import (
	"bytes"
	"strings"
	"testing"

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
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
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
