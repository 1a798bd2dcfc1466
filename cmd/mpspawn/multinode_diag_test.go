//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/internal/proctest"
)

// stuckScript is a Python rank stuck for good: in stuck_in_allreduce on
// node 1, in waiting_for_peer on node 0, after one line at the start.
const stuckScript = `import os, threading
def stuck_in_allreduce():
    threading.Event().wait()
def waiting_for_peer():
    threading.Event().wait()
print("started", os.environ["RANK"], flush=True)
if os.environ["GROUP_RANK"] == "1":
    stuck_in_allreduce()
else:
    waiting_for_peer()
`

// python3 is the interpreter of the Python ranks: Debian's, which starts
// at once, when there is one.
func python3() string {
	if _, err := os.Stat(systemPython); err == nil {
		return systemPython
	}
	return "python3"
}

// TestMultinodeHangAndTimeout: a hang (or a timeout) found on node 1 stops
// both nodes, under both start methods. Node 1's bound is short, node 0's long, so that node 0 is
// stopped by node 1's: both exit with its code (1, or 124), both summaries
// name it and its node, each shows where its own ranks were, and the run
// is closed as failed.
func TestMultinodeHangAndTimeout(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "stuck.py")
	if err := os.WriteFile(script, []byte(stuckScript), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, method, flag, short, cause string
		code                             int
	}{
		{"hang", "spawn", "--hang-timeout", "2s", "hang: no output for 2s", 1},
		{"hang-forkserver", "forkserver", "--hang-timeout", "2s", "hang: no output for 2s", 1},
		{"timeout", "spawn", "--timeout", "3s", "timeout: the job ran for 3s", 124},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var nodes []*node
			for i, addr := range []string{"127.0.0.2", "127.0.0.3"} {
				bound := map[int]string{0: "60s", 1: tc.short}[i]
				sum := filepath.Join(dir, fmt.Sprintf("%s%d.json", tc.name, i))
				nodes = append(nodes, startNode(t, diagArgs(srv, tc.name, addr, "2", "--nproc-per-node", "2", tc.flag, bound,
					"--summary-json", sum, "--python", python3(), "--start-method", tc.method, script)...))
			}
			for i, n := range nodes {
				if code := n.wait(t); code != tc.code {
					t.Errorf("node %d exited %d; want %d; stderr:\n%s", i, code, tc.code, n.stderr.String())
				}
			}
			for i, n := range nodes {
				fn := map[int]string{0: "waiting_for_peer", 1: "stuck_in_allreduce"}[i]
				checkCauseSummary(t, filepath.Join(dir, fmt.Sprintf("%s%d.json", tc.name, i)), i, tc.cause, tc.code, fn)
				want := fmt.Sprintf("Root Cause: %s on node 1 (%s, 127.0.0.3) (mpspawn stopped the ranks of every node)", tc.cause, hostname(t))
				where := fmt.Sprintf(`stuck.py", line %d in %s`, map[int]int{0: 5, 1: 3}[i], fn)
				if s := n.stderr.String(); !strings.Contains(s, want) || strings.Count(s, where) != 2 {
					t.Errorf("node %d stderr does not name the root cause (%q) and show both its ranks at %s:\n%s", i, want, where, s)
				}
			}
			t.Logf("node 0 exited %v after node 1", nodes[0].ended.Sub(nodes[1].ended))
			late := startNode(t, diagArgs(srv, tc.name, "127.0.0.4", "2", "--no-python", "true")...)
			if code := late.wait(t); code != 2 || !strings.Contains(late.stderr.String(), "the run has already ended (failed)") {
				t.Errorf("late node exited %d, %q; want 2, the run ended as failed", code, late.stderr.String())
			}
		})
	}
}

// checkCauseSummary checks node i's --summary-json: the cause found on
// node 1, the exit code, and every rank's Python stack in fn, its ranks
// gone.
func checkCauseSummary(t *testing.T, path string, i int, cause string, code int, fn string) {
	t.Helper()
	sum := readSummary(t, path)
	cn, _ := sum["cause_node"].(map[string]any)
	if sum["cause"] != cause || cn == nil || cn["node_rank"] != 1.0 || cn["addr"] != "127.0.0.3" {
		t.Errorf("node %d summary cause = %v at %v; want %q at node 1 (127.0.0.3)", i, sum["cause"], cn, cause)
	}
	if sum["exit_code"] != float64(code) || sum["status"] != "failed" {
		t.Errorf("node %d summary = exit %v, %v; want %d, failed", i, sum["exit_code"], sum["status"], code)
	}
	ranks, _ := sum["ranks"].([]any)
	if len(ranks) != 2 {
		t.Fatalf("node %d summary has %d ranks; want 2", i, len(ranks))
	}
	for _, r := range ranks {
		r, _ := r.(map[string]any)
		st, _ := r["stack"].(map[string]any)
		if text, _ := st["text"].(string); st["kind"] != "python" || !strings.Contains(text, "in "+fn) {
			t.Errorf("node %d rank %v stack = %v; want a Python stack in %s", i, r["rank"], st, fn)
		}
		if pid, _ := r["pid"].(float64); pid <= 0 || !proctest.WaitExit(int(pid), time.Second) {
			t.Errorf("node %d rank %v (pid %v) still runs after its node exited", i, r["rank"], r["pid"])
		}
	}
}

// TestMultinodeHangBoth: both nodes hang with the same bound, so both
// watchdogs fire at about the same time: the first publication is the root
// cause on both nodes, and each still shows its own ranks' stacks.
func TestMultinodeHangBoth(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "stuck.py")
	if err := os.WriteFile(script, []byte(stuckScript), 0o644); err != nil {
		t.Fatal(err)
	}
	var nodes []*node
	for i, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		nodes = append(nodes, startNode(t, diagArgs(srv, "both", addr, "2", "--nproc-per-node", "2", "--hang-timeout", "2s",
			"--summary-json", filepath.Join(dir, fmt.Sprintf("sum%d.json", i)), "--no-python", python3(), "-u", script)...))
	}
	var at []any
	for i, n := range nodes {
		if code := n.wait(t); code != 1 {
			t.Errorf("node %d exited %d; want 1; stderr:\n%s", i, code, n.stderr.String())
		}
		sum := readSummary(t, filepath.Join(dir, fmt.Sprintf("sum%d.json", i)))
		if sum["cause"] != "hang: no output for 2s" || sum["cause_node"] == nil {
			t.Errorf("node %d summary cause = %v at %v; want the hang and its node", i, sum["cause"], sum["cause_node"])
		}
		at = append(at, sum["cause_node"])
		ranks, _ := sum["ranks"].([]any)
		fn := map[int]string{0: "waiting_for_peer", 1: "stuck_in_allreduce"}[i]
		for _, r := range ranks {
			st, _ := r.(map[string]any)["stack"].(map[string]any)
			if text, _ := st["text"].(string); !strings.Contains(text, "in "+fn) {
				t.Errorf("node %d rank stack = %v; want a Python stack in %s", i, st, fn)
			}
		}
	}
	if fmt.Sprint(at[0]) != fmt.Sprint(at[1]) {
		t.Errorf("the nodes name different root causes: node %v and node %v", at[0], at[1])
	}
	t.Logf("root cause on both nodes: %v", at[0])
}

// TestMultinodeHangRestart: a hang on node 1 is a failure of the job: with
// --max-restarts 1 it spends the restart on both nodes, and the second
// attempt succeeds.
func TestMultinodeHangRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	script := `echo attempt=$TORCHELASTIC_RESTART_COUNT; [ "$TORCHELASTIC_RESTART_COUNT" = 1 ] && exit 0; exec sleep 60`
	var nodes []*node
	for i, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		bound := map[int]string{0: "60s", 1: "2s"}[i]
		nodes = append(nodes, startNode(t, diagArgs(srv, "again", addr, "2", "--max-restarts", "1", "--hang-timeout", bound,
			"--no-python", "sh", "-c", script)...))
	}
	for i, n := range nodes {
		if code := n.wait(t); code != 0 {
			t.Errorf("node %d exited %d; want 0; stderr:\n%s", i, code, n.stderr.String())
		}
		want := "hang: no output for 2s on node 1 (" + hostname(t) + "); restarting the ranks (restart 1 of 1)"
		if s := n.stderr.String(); !strings.Contains(s, want) {
			t.Errorf("node %d stderr does not say %q:\n%s", i, want, s)
		}
		if !strings.Contains(n.stdout.String(), "attempt=1") {
			t.Errorf("node %d stdout = %q; want the second attempt", i, n.stdout.String())
		}
	}
}

// diagArgs are etcdArgs with a lease TTL of 5s: these tests are about
// hangs, and a loaded machine (-race) can starve a 1s lease's keep-alive.
func diagArgs(srv *etcdtest.Server, id, addr, nnodes string, extra ...string) []string {
	return etcdArgs(srv, id, addr, nnodes, append([]string{"--rdzv-conf", "lease_ttl=5,join_timeout=20"}, extra...)...)
}

func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
