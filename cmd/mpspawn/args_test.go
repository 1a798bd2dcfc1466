//go:build linux

package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestMasterPortTaken: an explicit --master-port that a process on this
// host already listens on is refused before any rank starts, naming the
// port (rank 0 would otherwise fail in TCPStore with errno 98).
func TestMasterPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	started := filepath.Join(t.TempDir(), "started")
	args := []string{"mpspawn", "--master-port", port, "--no-python", "sh", "-c", "touch " + started}
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	want := "mpspawn: error: --master-port " + port + ": already in use on this host"
	if code != 2 || !strings.HasPrefix(stderr.String(), want) || strings.Count(stderr.String(), "\n") != 1 {
		t.Errorf("run(%q) = %d, stderr %q; want 2 and one line starting %q", args, code, stderr.String(), want)
	}
	if _, err := os.Stat(started); err == nil {
		t.Errorf("run(%q) started a rank", args)
	}
	// Node 1 does not host rank 0: the port is not its to check.
	args = []string{"mpspawn", "--nnodes", "2", "--node-rank", "1", "--master-port", port, "--no-python", "true"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Errorf("run(%q) = %d; want 0", args, code)
	}
}

func TestNearestFlag(t *testing.T) {
	names := flagNames(flags())
	tests := []struct{ in, want string }{
		{"nproc-per-nod", "--nproc-per-node"},
		{"nproc", "--nproc-per-node"},
		{"standalon", "--standalone"},
		{"master-adr", "--master-addr"},
		{"logdir", "--log-dir"},
		{"max-restart", "--max-restarts"},
		{"rdzv-endpiont", "--rdzv-endpoint"},
		{"node-rnak", "--node-rank"},
		{"xyz", ""},
	}
	for _, tt := range tests {
		if got := nearestFlag(tt.in, names); got != tt.want {
			t.Errorf("nearestFlag(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestWrap(t *testing.T) {
	tests := []struct {
		s     string
		width int
		want  string
	}{
		{"a b c", 80, "  a b c"},
		{"aaaa bbbb cccc", 11, "  aaaa bbbb\n    cccc"},
		{"averyveryverylongword x", 8, "  averyveryverylongword\n    x"},
	}
	for _, tt := range tests {
		if got := wrap(tt.s, tt.width, "  ", "    "); got != tt.want {
			t.Errorf("wrap(%q, %d) = %q; want %q", tt.s, tt.width, got, tt.want)
		}
	}
}

// TestHelpWidth: every help line fits the width asked for, down to 60
// columns (only an unbreakable word may not).
func TestHelpWidth(t *testing.T) {
	for _, width := range []int{60, 80, 120} {
		var b bytes.Buffer
		writeHelp(&b, newApp(&b, &b), width)
		for _, l := range strings.Split(b.String(), "\n") {
			if len(l) > width && strings.Contains(strings.TrimSpace(l), " ") {
				t.Errorf("writeHelp(width %d): line of %d columns: %q", width, len(l), l)
			}
		}
	}
}
