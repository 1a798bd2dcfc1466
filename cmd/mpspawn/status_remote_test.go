//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/launcher/live"
)

// remoteStatus runs mpspawn status ARGS in a process of its own (not a
// node of the job), bounded, and returns its exit code and output.
func remoteStatus(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/proc/self/exe", append([]string{"status"}, args...)...)
	cmd.Args[0] = "mpspawn"
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("mpspawn status %s: no end within 30s", strings.Join(args, " "))
	}
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// waitRemote polls mpspawn status --json through the rendezvous until ok
// holds, at most 30 s.
func waitRemote(t *testing.T, ep, id string, what string, ok func(*live.State) bool) *live.State {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out, errs := remoteStatus(t, "--rdzv-endpoint", ep, "--rdzv-id", id, "--json")
		var st live.State
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil && ok(&st) {
			return &st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen in 30s; last status: exit %d, %s%s", what, code, out, errs)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestStatusRemoteTwoNodes: two nodes on loopback through etcd; mpspawn
// status on no node of the job, given the endpoint and the run id, shows
// both nodes' ranks (JSON and table), and a SIGKILLed node as gone.
func TestStatusRemoteTwoNodes(t *testing.T) {
	srv := etcdtest.Start(t)
	var nodes []*node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		args := etcdArgs(srv, "remote", addr, "1:2", "--nproc-per-node", "2", "--max-restarts", "3", "--no-python", "sh", "-c", "echo rank $RANK up; exec sleep 60")
		nodes = append(nodes, startNode(t, args...))
	}
	both := func(st *live.State) bool {
		return len(st.Ranks) == 4 && len(st.NodeStates) == 2 && st.Ranks[3].LastLine != ""
	}
	st := waitRemote(t, srv.Endpoint, "remote", "both nodes' ranks", both)
	for i, r := range st.Ranks {
		if r.Rank != i || r.Node != i/2 || r.Pid <= 0 || syscall.Kill(r.Pid, 0) != nil || r.ExitCode != nil {
			t.Errorf("rank %d = %+v; want rank %d of node %d, alive", i, r, i, i/2)
		}
	}
	if st.RunID != "remote" || st.NodeStates[0].NodeRank != 0 || st.NodeStates[1].NodeRank != 1 || st.NodeStates[1].Host == "" {
		t.Errorf("status --json = %+v; want run remote with nodes 0 and 1", st)
	}
	code, out, errs := remoteStatus(t, "--rdzv-endpoint", srv.Endpoint, "--rdzv-id", "remote")
	if code != 0 || !strings.Contains(out, "\n   3   1    1 ") || !strings.Contains(out, "\n   0   0    0 ") || !strings.Contains(out, "node 1/2") {
		t.Errorf("status table = %d, %q %q; want the 4 ranks of both nodes", code, out, errs)
	}
	victim := st.NodeStates[1].Pid
	var n1 *node
	for _, n := range nodes {
		if n.cmd.Process.Pid == victim {
			n1 = n
		}
	}
	if n1 == nil {
		t.Fatalf("node 1's launcher pid %d is none of the nodes'", victim)
	}
	_ = n1.cmd.Process.Kill()
	<-n1.done
	gone := waitRemote(t, srv.Endpoint, "remote", "node 1 gone", func(st *live.State) bool {
		return len(st.NodeStates) == 2 && st.NodeStates[1].Gone && !st.NodeStates[0].Gone
	})
	for _, r := range gone.Ranks {
		if r.Node != 0 {
			t.Errorf("rank %+v of gone node 1 still listed", r)
		}
	}
	code, out, _ = remoteStatus(t, "--rdzv-endpoint", srv.Endpoint, "--rdzv-id", "remote")
	if code != 0 || !strings.Contains(out, "\nnode 1 127.0.0.3: gone (") && !strings.Contains(out, "\nnode 1: gone (") || strings.Contains(out, "\n   3   1    1 ") {
		t.Errorf("status table after the SIGKILL = %d, %q; want a line for node 1, gone", code, out)
	}
}

// TestStatusRemoteErrors: bad input and an unreachable or wrong etcd are
// one line and exit code 2, within the connect timeout.
func TestStatusRemoteErrors(t *testing.T) {
	srv := etcdtest.Start(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rdzv-id", "x"}, "--rdzv-id goes with --rdzv-endpoint"},
		{[]string{"--rdzv-endpoint", srv.Endpoint}, "give the run id"},
		{[]string{"--rdzv-endpoint", "nohostport", "--rdzv-id", "x"}, "is not HOST:PORT"},
		{[]string{"--rdzv-endpoint", srv.Endpoint, "--rdzv-id", "x", "--rdzv-conf", "token=/nonexistent"}, "token=/nonexistent"},
		{[]string{"--rdzv-endpoint", srv.Endpoint, "--rdzv-id", "nosuchrun"}, "no node of run nosuchrun publishes"},
		{[]string{"--rdzv-endpoint", "127.0.0.1:1", "--rdzv-id", "x", "--rdzv-conf", "connect_timeout=1"}, "not reachable within 1s"},
	} {
		start := time.Now()
		code, out, errs := remoteStatus(t, c.args...)
		if code != 2 || out != "" || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, c.want) {
			t.Errorf("status %s = %d, %q, %q; want exit 2 and one line with %q", strings.Join(c.args, " "), code, out, errs, c.want)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("status %s took %v", strings.Join(c.args, " "), d)
		}
	}
}
