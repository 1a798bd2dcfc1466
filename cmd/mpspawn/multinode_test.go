//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/internal/proctest"
	"golang.org/x/sys/unix"
)

// nodeTimeout bounds every node's run in these tests (torch jobs on a busy
// machine included). A node the others fail to stop runs its ranks'
// `sleep 60` to the end and exits 0, which fails its test.
const nodeTimeout = 120 * time.Second

// node is one mpspawn process of a multi-node test: this test binary run
// as the CLI (see TestMain).
type node struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr notifyBuffer
	done   chan struct{}
	code   int
	ended  time.Time
}

// notifyBuffer is a node's stderr: written by its copier goroutine, read
// by the test, which can wait for a line.
type notifyBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on each write
}

func (n *notifyBuffer) Write(p []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.changed != nil {
		close(n.changed)
		n.changed = nil
	}
	return n.b.Write(p)
}

func (n *notifyBuffer) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.b.String()
}

// waitFor waits, at most d, until the buffer holds s.
func (n *notifyBuffer) waitFor(s string, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		n.mu.Lock()
		if strings.Contains(n.b.String(), s) {
			n.mu.Unlock()
			return true
		}
		if n.changed == nil {
			n.changed = make(chan struct{})
		}
		ch := n.changed
		n.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

// startNode starts mpspawn with args; it is SIGKILLed by pid if it is
// still running when the test ends.
func startNode(t *testing.T, args ...string) *node {
	t.Helper()
	n := &node{done: make(chan struct{})}
	n.cmd = exec.Command("/proc/self/exe", args...)
	n.cmd.Args[0] = "mpspawn"
	n.cmd.Stdout, n.cmd.Stderr = &n.stdout, &n.stderr
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = n.cmd.Wait()
		n.ended = time.Now()
		n.code = n.cmd.ProcessState.ExitCode()
		if ws, ok := n.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			n.code = 128 + int(ws.Signal())
		}
		close(n.done)
	}()
	t.Cleanup(func() {
		_ = n.cmd.Process.Kill()
		<-n.done
	})
	return n
}

// wait waits for the node to exit, bounded, and returns its exit code.
func (n *node) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-n.done:
		return n.code
	case <-time.After(nodeTimeout):
		_ = n.cmd.Process.Kill()
		<-n.done
		t.Fatalf("mpspawn %q still running after %v; stderr:\n%s", n.cmd.Args[1:], nodeTimeout, n.stderr.String())
		return -1
	}
}

// etcdArgs are the flags of node addr in job id on srv with nnodes nodes.
func etcdArgs(srv *etcdtest.Server, id, addr, nnodes string, extra ...string) []string {
	return append([]string{"--rdzv-backend", "etcd", "--rdzv-endpoint", srv.Endpoint, "--rdzv-id", id,
		"--nnodes", nnodes, "--local-addr", addr, "--rdzv-conf", "lease_ttl=1,join_timeout=20", "--grace-period", "5s"}, extra...)
}

// readSummary reads a --summary-json file.
func readSummary(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

// TestMultinodeRankFailure: rank 3, on node 1, exits 3; node 0's ranks
// (sleeping for a minute) are stopped at once, and both nodes exit 3 and
// name rank 3 on node 1 as the root cause.
func TestMultinodeRankFailure(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	// Rank 3 fails once the others have said what they got (a marker
	// file each; bounded), so that they are not stopped before they do.
	script := `echo rank=$RANK world=$WORLD_SIZE master=$MASTER_ADDR group=$GROUP_RANK; touch ` + dir + `/said$RANK
if [ "$RANK" = 3 ]; then
	i=0; while [ $i -lt 1200 ] && [ "$(ls ` + dir + ` | grep -c '^said')" -lt 4 ]; do sleep 0.05; i=$((i+1)); done
	exit 3
fi
exec sleep 60`
	var nodes []*node
	for i, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		sum := filepath.Join(dir, fmt.Sprintf("sum%d.json", i))
		nodes = append(nodes, startNode(t, etcdArgs(srv, "job", addr, "2", "--nproc-per-node", "2", "--summary-json", sum, "--no-python", "sh", "-c", script)...))
	}
	for i, n := range nodes {
		if code := n.wait(t); code != 3 {
			t.Errorf("node %d exited %d; want 3 (rank 3's code); stderr:\n%s", i, code, n.stderr.String())
		}
		sum := readSummary(t, filepath.Join(dir, fmt.Sprintf("sum%d.json", i)))
		rc, _ := sum["root_cause"].(map[string]any)
		if rc == nil || rc["rank"] != 3.0 || rc["exit_code"] != 3.0 {
			t.Errorf("node %d summary root cause = %v; want rank 3, exit code 3", i, rc)
		}
		if sum["exit_code"] != 3.0 || sum["status"] != "failed" {
			t.Errorf("node %d summary = exit %v, %v; want 3, failed", i, sum["exit_code"], sum["status"])
		}
	}
	if s := nodes[0].stderr.String(); !strings.Contains(s, "Root Cause") || !strings.Contains(s, "note      : on node 1 (127.0.0.3)") ||
		!strings.Contains(s, "mpspawn: error: stopped the ranks: rank 3 on node 1") {
		t.Errorf("node 0 stderr does not name rank 3 on node 1 as the root cause:\n%s", s)
	}
	for i, n := range nodes {
		if !strings.Contains(n.stdout.String(), "world=4 master=127.0.0.2 group="+fmt.Sprint(i)) {
			t.Errorf("node %d stdout = %q; want world 4, master 127.0.0.2, group %d", i, n.stdout.String(), i)
		}
	}
	t.Logf("node 0 exited %v after node 1", nodes[0].ended.Sub(nodes[1].ended))
}

// TestMultinodeNodeKilled: node 1's launcher is SIGKILLed while its ranks
// run: its lease expires, and node 0 stops its ranks and exits 1, naming
// the lost node.
func TestMultinodeNodeKilled(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "ready")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Node 1's rank says it runs through the FIFO; node 0's rank writes
	// its pid.
	script := `echo $$ > ` + dir + `/pid$GROUP_RANK; [ "$GROUP_RANK" = 1 ] && echo up > ` + fifo + `; exec sleep 60`
	n0 := startNode(t, etcdArgs(srv, "job", "127.0.0.2", "2", "--no-python", "sh", "-c", script)...)
	n1 := startNode(t, etcdArgs(srv, "job", "127.0.0.3", "2", "--no-python", "sh", "-c", script)...)
	readLine(t, fifo)
	killed := time.Now()
	if err := n1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if code := n0.wait(t); code != 1 {
		t.Errorf("node 0 exited %d; want 1 (a lost node); stderr:\n%s", code, n0.stderr.String())
	}
	if s := n0.stderr.String(); !strings.Contains(s, "node 1 (127.0.0.3) lost") {
		t.Errorf("node 0 stderr does not name the lost node:\n%s", s)
	}
	pid := readPid(t, filepath.Join(dir, "pid0"))
	if !proctest.WaitExit(pid, time.Second) {
		t.Errorf("node 0's rank %d still runs after node 0 exited", pid)
	}
	t.Logf("node 0 exited %v after node 1 was SIGKILLed (lease TTL 1s)", n0.ended.Sub(killed))
}

// readLine reads one line from a FIFO, bounded.
func readLine(t *testing.T, path string) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		b, _ := os.ReadFile(path)
		got <- string(b)
	}()
	select {
	case s := <-got:
		return s
	case <-time.After(nodeTimeout):
		// Unblock the reader: open the FIFO for writing ourselves.
		if f, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Fatalf("no line on %s within %v", path, nodeTimeout)
		return ""
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

// TestMultinodeUnreachable: no etcd at the endpoint is one line and exit 2
// within connect_timeout.
func TestMultinodeUnreachable(t *testing.T) {
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("127.0.0.1:%d", port)
	n := startNode(t, "--rdzv-backend", "etcd", "--rdzv-endpoint", ep, "--rdzv-id", "x", "--nnodes", "2",
		"--rdzv-conf", "connect_timeout=1", "--no-python", "true")
	if code := n.wait(t); code != 2 {
		t.Errorf("exit %d; want 2", code)
	}
	want := "mpspawn: error: --rdzv-endpoint " + ep + ": etcd not reachable within 1s (connect_timeout): "
	if s := n.stderr.String(); !strings.HasPrefix(s, want) || strings.Count(s, "\n") != 1 {
		t.Errorf("stderr = %q; want one line starting %q", s, want)
	}
}

// TestMultinodeTwoJobsAndLateNode: two jobs on one etcd run side by side
// and both succeed; a node that arrives after a job ended is told so at
// once, exit 2.
func TestMultinodeTwoJobsAndLateNode(t *testing.T) {
	srv := etcdtest.Start(t)
	script := `echo job=$TORCHELASTIC_RUN_ID rank=$RANK world=$WORLD_SIZE port=$MASTER_PORT`
	var nodes []*node
	for _, id := range []string{"one", "two"} {
		for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
			nodes = append(nodes, startNode(t, etcdArgs(srv, id, addr, "2", "--nproc-per-node", "2", "--no-python", "sh", "-c", script)...))
		}
	}
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			if code := n.wait(t); code != 0 {
				t.Errorf("node %d exited %d; stderr:\n%s", i, code, n.stderr.String())
			}
		})
	}
	wg.Wait()
	for i, n := range nodes {
		job := []string{"one", "two"}[i/2]
		if got := strings.Count(n.stdout.String(), "job="+job+" "); got != 2 || !strings.Contains(n.stdout.String(), "world=4") {
			t.Errorf("node %d stdout = %q; want 2 ranks of job %s in a world of 4", i, n.stdout.String(), job)
		}
	}
	late := startNode(t, etcdArgs(srv, "one", "127.0.0.4", "2", "--no-python", "true")...)
	if code := late.wait(t); code != 2 {
		t.Errorf("late node exited %d; want 2", code)
	}
	want := "mpspawn: error: rendezvous one: the run has already ended (succeeded); this node arrived too late: start a new job with another --rdzv-id\n"
	if s := late.stderr.String(); s != want {
		t.Errorf("late node stderr = %q; want %q", s, want)
	}
}

// TestMultinodeRestart: with --max-restarts 1, a rank that fails in the
// first attempt restarts every node's ranks; the second attempt succeeds,
// with TORCHELASTIC_RESTART_COUNT 1 on both nodes, and logs in attempt_1.
func TestMultinodeRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	logs := t.TempDir()
	script := `echo rank=$RANK restart=$TORCHELASTIC_RESTART_COUNT; [ "$RANK" = 1 ] && [ "$TORCHELASTIC_RESTART_COUNT" = 0 ] && exit 4; [ "$TORCHELASTIC_RESTART_COUNT" = 0 ] && exec sleep 60; exit 0`
	var nodes []*node
	for i, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		nodes = append(nodes, startNode(t, etcdArgs(srv, "job", addr, "2", "--max-restarts", "1",
			"--log-dir", filepath.Join(logs, fmt.Sprint(i)), "--tee", "1", "--no-python", "sh", "-c", script)...))
	}
	for i, n := range nodes {
		if code := n.wait(t); code != 0 {
			t.Errorf("node %d exited %d; want 0; stderr:\n%s", i, code, n.stderr.String())
		}
		// Node 0's first ranks may be stopped before they print.
		if !strings.Contains(n.stdout.String(), "restart=1") || (i == 1 && !strings.Contains(n.stdout.String(), "rank=1 restart=0")) {
			t.Errorf("node %d stdout = %q; want restart 1 (and 0 for the failing rank 1)", i, n.stdout.String())
		}
		if !strings.Contains(n.stderr.String(), "restarting the ranks (restart 1 of 1)") {
			t.Errorf("node %d stderr = %q; want it to say it restarts", i, n.stderr.String())
		}
		out, err := os.ReadFile(filepath.Join(logs, fmt.Sprint(i), "job", "attempt_1", "0", "stdout.log"))
		if err != nil || !strings.Contains(string(out), "restart=1") {
			t.Errorf("node %d attempt_1 log = %q, %v; want restart=1", i, out, err)
		}
	}
}
