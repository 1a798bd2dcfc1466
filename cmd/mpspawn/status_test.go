//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/launcher/live"
)

// liveScript is a rank that says it is up (a pid file), waits for DIR/go,
// then does what its rank says: 0 spins, 1 allocates 256 MiB, 2 goes
// silent, 3 exits 0.
func liveScript(dir string) string {
	return `echo rank $RANK up; echo $$ > ` + dir + `/pid$RANK
i=0; while [ ! -e ` + dir + `/go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
case $RANK in
0) echo spinning; while :; do :; done;;
1) exec python3 -c 'import time; b = b"x" * (256 << 20); print("allocated", flush=True); time.sleep(600)';;
2) exec sleep 600;;
*) echo done; exit 0;;
esac`
}

// startLiveJob starts a 4-rank job of liveScript and waits (bounded) for
// every rank's pid file.
func startLiveJob(t *testing.T, extra ...string) (*node, string) {
	t.Helper()
	dir := t.TempDir()
	args := append(extra, "--nproc-per-node", "4", "--no-python", "sh", "-c", liveScript(dir))
	n := startNode(t, args...)
	deadline := time.Now().Add(30 * time.Second)
	for r := range 4 {
		for !fileExists(filepath.Join(dir, fmt.Sprintf("pid%d", r))) {
			if time.Now().After(deadline) {
				t.Fatalf("rank %d did not start; stderr:\n%s", r, n.stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return n, dir
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// statusJSON runs mpspawn status --json PID in this process.
func statusJSON(t *testing.T, pid int) *live.State {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run([]string{"mpspawn", "status", "--json", strconv.Itoa(pid)}, &out, &errb); code != 0 {
		t.Fatalf("mpspawn status --json %d exited %d: %s", pid, code, errb.String())
	}
	var st live.State
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("status --json: %v: %s", err, out.String())
	}
	return &st
}

// waitState polls status --json (each state is a second's sample) until
// ok holds, at most d.
func waitState(t *testing.T, pid int, d time.Duration, what string, ok func(*live.State) bool) *live.State {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := statusJSON(t, pid)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", " ")
			t.Fatalf("%s: not seen within %v; last state:\n%s", what, d, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestStatusJSONLiveJob(t *testing.T) {
	n, dir := startLiveJob(t)
	pid := n.cmd.Process.Pid
	st := waitState(t, pid, 10*time.Second, "4 ranks up, sampled", func(st *live.State) bool {
		if len(st.Ranks) != 4 {
			return false
		}
		for r, rk := range st.Ranks {
			// A rank sampled while it executes its program has no RSS yet.
			if rk.LastLine != fmt.Sprintf("rank %d up", r) || rk.RSSBytes == 0 {
				return false
			}
		}
		return true
	})
	if st.Pid != pid || st.RunID == "" {
		t.Errorf("state pid %d run %q; want %d and a run id", st.Pid, st.RunID, pid)
	}
	rss1 := st.Ranks[1].RSSBytes
	for r, rk := range st.Ranks {
		want, _ := strconv.Atoi(strings.TrimSpace(readLine(t, filepath.Join(dir, fmt.Sprintf("pid%d", r)))))
		if rk.Rank != r || rk.Pid != want || rk.ExitCode != nil || rk.RSSBytes <= 0 || rk.Threads < 1 {
			t.Errorf("rank %d = %+v; want pid %d alive with RSS and threads", r, rk, want)
		}
		if syscall.Kill(rk.Pid, 0) != nil {
			t.Errorf("rank %d pid %d is not alive", r, rk.Pid)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	st = waitState(t, pid, 20*time.Second, "rank 0 spins, rank 1 allocates, rank 3 exits 0", func(st *live.State) bool {
		r := st.Ranks
		return r[0].CPUPercent > 20 && r[1].RSSBytes > rss1+200<<20 && r[3].ExitCode != nil && *r[3].ExitCode == 0
	})
	age := st.Ranks[2].OutputAgeS
	waitState(t, pid, 10*time.Second, "rank 2's output age grows", func(st *live.State) bool {
		return st.Ranks[2].OutputAgeS >= age+1.5 && st.Ranks[2].LastLine == "rank 2 up"
	})
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	n.wait(t)
	if fileExists(filepath.Join("/tmp", fmt.Sprintf("mpspawn-%d", os.Geteuid()), fmt.Sprintf("%d.json", pid))) {
		t.Errorf("state file of pid %d left after exit", pid)
	}
}

func TestStatusListAndTable(t *testing.T) {
	n, _ := startLiveJob(t)
	pid := n.cmd.Process.Pid
	if !n.stderr.waitFor(fmt.Sprintf("mpspawn: pid %d, run id ", pid), 10*time.Second) {
		t.Fatalf("no start line; stderr:\n%s", n.stderr.String())
	}
	var out, errb bytes.Buffer
	if code := run([]string{"mpspawn", "status"}, &out, &errb); code != 0 || !strings.Contains(out.String(), fmt.Sprintf("%8d  ", pid)) ||
		!strings.Contains(out.String(), "4/4") {
		t.Errorf("mpspawn status = %d, %q; want a line for pid %d with 4/4 ranks", code, out.String(), pid)
	}
	out.Reset()
	if code := run([]string{"mpspawn", "status", strconv.Itoa(pid)}, &out, &errb); code != 0 || strings.Count(out.String(), "\n") != 6 ||
		!strings.Contains(out.String(), "\nRANK  LR NODE") || !strings.Contains(out.String(), "\n   3   3    0 ") {
		t.Errorf("mpspawn status %d = %d, %q; want the table of 4 ranks", pid, code, out.String())
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"mpspawn", "status", "1"}, &out, &errb); code != 2 || strings.Count(errb.String(), "\n") != 1 {
		t.Errorf("mpspawn status 1 = %d, %q; want exit 2 and one line", code, errb.String())
	}
}

// TestStatusOtherUser: a job of root, asked about by user nobody, is
// refused in one line: the state directory is root's, mode 0700.
func TestStatusOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run status as another user")
	}
	n, _ := startLiveJob(t)
	pid := n.cmd.Process.Pid
	statusJSON(t, pid) // published
	bin := filepath.Join(os.TempDir(), fmt.Sprintf("mpspawn-status-test-%d", os.Getpid()))
	copyExe(t, bin)
	c := exec.Command(bin, "status", strconv.Itoa(pid))
	c.Args[0] = "mpspawn"
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	c.Env = []string{"PATH=/usr/bin:/bin"}
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	want := fmt.Sprintf("mpspawn: error: status: job %d belongs to user 0, whose files this user may not read\n", pid)
	if c.ProcessState == nil || c.ProcessState.ExitCode() != 2 || errb.String() != want || out.Len() != 0 {
		t.Errorf("status %d as nobody: %v, stdout %q, stderr %q; want exit 2 and %q", pid, err, out.String(), errb.String(), want)
	}
}

// copyExe copies the test binary where user nobody can run it; removed
// at the end of the test.
func copyExe(t *testing.T, dst string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dst) })
}

// TestTopInTmux runs mpspawn top in a detached tmux session of its own
// server (80x24), reads the screen, switches the order and quits with q.
func TestTopInTmux(t *testing.T) {
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("no tmux")
	}
	n, _ := startLiveJob(t)
	pid := n.cmd.Process.Pid
	statusJSON(t, pid)
	sock := fmt.Sprintf("mpspawn-top-%d", os.Getpid())
	tm := func(args ...string) string {
		out, err := exec.Command(tmux, append([]string{"-L", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %q: %v: %s", args, err, out)
		}
		return string(out)
	}
	bin := filepath.Join(t.TempDir(), "mpspawn")
	copyExe(t, bin)
	exited := filepath.Join(t.TempDir(), "exited")
	tm("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", fmt.Sprintf("%s top %d; echo $? > %s; sleep 600", bin, pid, exited))
	t.Cleanup(func() { _ = exec.Command(tmux, "-L", sock, "kill-server").Run() })
	screen := waitScreen(t, func() string { return tm("capture-pane", "-p", "-t", "top") }, "rank 3 up")
	for _, want := range []string{"RANK  LR NODE", "sorted by CPU", fmt.Sprintf("pid %d ", pid)} {
		if !strings.Contains(screen, want) {
			t.Errorf("top screen lacks %q:\n%s", want, screen)
		}
	}
	for _, l := range strings.Split(screen, "\n") {
		if len([]rune(l)) > 80 {
			t.Errorf("line over 80 columns: %q", l)
		}
	}
	tm("send-keys", "-t", "top", "o")
	waitScreen(t, func() string { return tm("capture-pane", "-p", "-t", "top") }, "sorted by output age")
	tm("send-keys", "-t", "top", "q")
	waitScreen(t, func() string {
		b, _ := os.ReadFile(exited)
		return string(b)
	}, "0\n")
}

// waitScreen calls read until what it returns holds want, at most 15 s.
func waitScreen(t *testing.T, read func() string, want string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := read()
		if strings.Contains(s, want) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q not seen in 15s; last:\n%s", want, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestStatusTwoNodes: two nodes on loopback through etcd (elastic 1:2):
// status on one node shows the other's ranks; once that one is SIGKILLed, it is
// shown as gone within the lease TTL (and a publishing interval), while
// node 0 runs its ranks again (a restart).
func TestStatusTwoNodes(t *testing.T) {
	srv := etcdtest.Start(t)
	var nodes []*node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		args := etcdArgs(srv, "live", addr, "1:2", "--nproc-per-node", "2", "--max-restarts", "3", "--no-python", "sh", "-c", "echo rank $RANK up; exec sleep 60")
		nodes = append(nodes, startNode(t, args...))
	}
	var n0, n1 *node
	st := waitNodes(t, nodes, func(st *live.State) bool { return len(st.Peers) == 1 && len(st.Peers[0].Ranks) == 2 }, "node 1's ranks")
	for _, n := range nodes {
		if n.cmd.Process.Pid == st.Pid {
			n0 = n
		} else {
			n1 = n
		}
	}
	peer := st.Peers[0]
	if other := 1 - st.NodeRank; peer.NodeRank != other || peer.Ranks[0].Node != other || peer.Ranks[0].Rank != 2*other || syscall.Kill(peer.Ranks[0].Pid, 0) != nil {
		t.Errorf("peer of node %d = %+v; want the other node with its live ranks", st.NodeRank, peer)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"mpspawn", "status", strconv.Itoa(st.Pid)}, &out, &errb); code != 0 || strings.Count(out.String(), "\n") != 7 || !strings.Contains(out.String(), "\n   3   1    1 ") || !strings.Contains(out.String(), "\n   0   0    0 ") {
		t.Errorf("status = %d, %q; want the 4 ranks of both nodes", code, out.String())
	}
	_ = n1.cmd.Process.Kill()
	<-n1.done
	waitNodes(t, []*node{n0}, func(st *live.State) bool { return len(st.Peers) == 1 && st.Peers[0].Gone }, "node 1 gone")
}

// waitNodes polls the state of each node until ok holds for one, at
// most 30 s, and returns that state.
func waitNodes(t *testing.T, nodes []*node, ok func(*live.State) bool, what string) *live.State {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, n := range nodes {
			if st, err := live.Read(n.cmd.Process.Pid); err == nil && ok(st) {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen in 30s; stderr:\n%s", what, nodes[0].stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
