//go:build linux

package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// mkfifos makes FIFOs named names in dir.
func mkfifos(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := unix.Mkfifo(filepath.Join(dir, n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// writeFIFO writes a line to a FIFO a rank reads, bounded: opening a FIFO
// for writing waits for its reader.
func writeFIFO(t *testing.T, path string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- os.WriteFile(path, []byte("go\n"), 0) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(nodeTimeout):
		t.Fatalf("nobody read %s within %v", path, nodeTimeout)
	}
}

// TestMultinodeElastic: with --nnodes 1:3, node A starts alone; node B
// arriving stops A's ranks and a new round takes both in without spending
// a restart; B SIGKILLed is a lost node, and A, with a restart left,
// carries on alone and succeeds.
func TestMultinodeElastic(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	mkfifos(t, dir, "alone", "both")
	script := `echo world=$WORLD_SIZE restart=$TORCHELASTIC_RESTART_COUNT group=$GROUP_RANK
if [ $WORLD_SIZE = 1 ] && [ $TORCHELASTIC_RESTART_COUNT = 0 ]; then echo up > ` + dir + `/alone; exec sleep 60; fi
if [ $WORLD_SIZE = 2 ]; then [ $GROUP_RANK = 1 ] && echo up > ` + dir + `/both; exec sleep 60; fi
exit 0`
	args := func(addr string) []string {
		a := etcdArgs(srv, "elastic", addr, "1:3", "--max-restarts", "1", "--no-python", "sh", "-c", script)
		// last_call_timeout: a round starts 300 ms after its first node.
		for i := range a {
			if a[i] == "lease_ttl=1,join_timeout=20" {
				a[i] += ",last_call_timeout=0.3"
			}
		}
		return a
	}
	a := startNode(t, args("127.0.0.2")...)
	readLine(t, filepath.Join(dir, "alone"))
	b := startNode(t, args("127.0.0.3")...)
	readLine(t, filepath.Join(dir, "both"))
	if err := b.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if code := a.wait(t); code != 0 {
		t.Fatalf("node A exited %d; want 0; stderr:\n%s", code, a.stderr.String())
	}
	out := a.stdout.String()
	for _, want := range []string{"world=1 restart=0 group=0", "world=2 restart=0 group=0", "world=1 restart=1 group=0"} {
		if !strings.Contains(out, want) {
			t.Errorf("node A stdout = %q; want a round with %q", out, want)
		}
	}
	errs := a.stderr.String()
	for _, want := range []string{"node 127.0.0.3 is waiting to join: starting a new round (no restart spent)", "node 1 (127.0.0.3) lost", "restarting the ranks (restart 1 of 1)"} {
		if !strings.Contains(errs, want) {
			t.Errorf("node A stderr = %q; want %q", errs, want)
		}
	}
}

// TestMultinodeEtcdRestart: etcd restarted while the ranks run, for less
// than the lease TTL, does not stop the job: both nodes succeed.
func TestMultinodeEtcdRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	mkfifos(t, dir, "up0", "up1", "go0", "go1")
	script := `echo up > ` + dir + `/up$GROUP_RANK; read x < ` + dir + `/go$GROUP_RANK; echo done`
	var nodes []*node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		args := etcdArgs(srv, "job", addr, "2", "--no-python", "sh", "-c", script)
		for i := range args {
			if args[i] == "lease_ttl=1,join_timeout=20" {
				args[i] = "lease_ttl=5,join_timeout=20"
			}
		}
		nodes = append(nodes, startNode(t, args...))
	}
	readLine(t, filepath.Join(dir, "up0"))
	readLine(t, filepath.Join(dir, "up1"))
	srv.Restart()
	writeFIFO(t, filepath.Join(dir, "go0"))
	writeFIFO(t, filepath.Join(dir, "go1"))
	for i, n := range nodes {
		if code := n.wait(t); code != 0 || !strings.Contains(n.stdout.String(), "done") {
			t.Errorf("node %d exited %d, stdout %q; want 0 and done; stderr:\n%s", i, code, n.stdout.String(), n.stderr.String())
		}
	}
}

// TestMultinodeFinishedNodeWaits: node 0's ranks succeed first; it waits
// for node 1, and when node 1's rank then fails, node 0 exits with its code
// too. With node 1 still running after close_timeout, node 0 stops waiting
// and exits 1: it could not confirm the job's success.
func TestMultinodeFinishedNodeWaits(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	mkfifos(t, dir, "done0", "go1")
	script := `if [ $GROUP_RANK = 0 ]; then echo up > ` + dir + `/done0; exit 0; fi; read x < ` + dir + `/go1; exit 6`
	var nodes []*node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		nodes = append(nodes, startNode(t, etcdArgs(srv, "wait", addr, "2", "--no-python", "sh", "-c", script)...))
	}
	readLine(t, filepath.Join(dir, "done0"))
	writeFIFO(t, filepath.Join(dir, "go1"))
	for i, n := range nodes {
		if code := n.wait(t); code != 6 {
			t.Errorf("node %d exited %d; want 6 (node 1's rank); stderr:\n%s", i, code, n.stderr.String())
		}
	}
	if s := nodes[0].stderr.String(); !strings.Contains(s, "Root Cause") || !strings.Contains(s, "on node 1 (127.0.0.3)") {
		t.Errorf("node 0 stderr does not name node 1's rank:\n%s", s)
	}

	// close_timeout: node 1 runs on; node 0 stops waiting after 1 s.
	hang := `[ $GROUP_RANK = 0 ] && exit 0; exec sleep 60`
	var n0 *node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		args := etcdArgs(srv, "hang", addr, "2", "--no-python", "sh", "-c", hang)
		for i := range args {
			if args[i] == "lease_ttl=1,join_timeout=20" {
				args[i] += ",close_timeout=1"
			}
		}
		if n := startNode(t, args...); n0 == nil {
			n0 = n
		}
	}
	// It cannot confirm the job succeeded: exit 1, saying so.
	if code := n0.wait(t); code != 1 || !strings.Contains(n0.stderr.String(), "could not confirm that the other nodes succeeded: some were still running after 1s (close_timeout)") {
		t.Errorf("node 0 exited %d; want 1 and a close_timeout line; stderr:\n%s", code, n0.stderr.String())
	}
}

// TestMultinodeInterrupted: SIGTERM to node 1's launcher stops its ranks
// and, through the rendezvous, node 0's; both exit 143, and node 0 says
// why.
func TestMultinodeInterrupted(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	mkfifos(t, dir, "up")
	script := `[ $GROUP_RANK = 1 ] && echo up > ` + dir + `/up; exec sleep 60`
	var nodes []*node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		nodes = append(nodes, startNode(t, etcdArgs(srv, "term", addr, "2", "--no-python", "sh", "-c", script)...))
	}
	readLine(t, filepath.Join(dir, "up"))
	if err := nodes[1].cmd.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if code := n.wait(t); code != 143 {
			t.Errorf("node %d exited %d; want 143; stderr:\n%s", i, code, n.stderr.String())
		}
	}
	if s := nodes[0].stderr.String(); !strings.Contains(s, "node 1 (127.0.0.3): mpspawn interrupted by SIGTERM") {
		t.Errorf("node 0 stderr does not say node 1 was interrupted:\n%s", s)
	}
}

// TestMultinodeEtcdLongOutage: etcd away for longer than the lease TTL is
// a warning on each node; the ranks carry on, and nobody counts the other
// as lost when etcd is back (every lease expired). The ranks succeed, but
// no node can confirm the job did (its lease, and with it its say, is
// gone): each exits 1 at once, saying so.
func TestMultinodeEtcdLongOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	mkfifos(t, dir, "up0", "up1", "go0", "go1")
	script := `echo up > ` + dir + `/up$GROUP_RANK; read x < ` + dir + `/go$GROUP_RANK; echo done`
	var nodes []*node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		nodes = append(nodes, startNode(t, etcdArgs(srv, "job", addr, "2", "--no-python", "sh", "-c", script)...))
	}
	readLine(t, filepath.Join(dir, "up0"))
	readLine(t, filepath.Join(dir, "up1"))
	srv.Stop()
	for i, n := range nodes {
		if !n.stderr.waitFor("lost the etcd lease", 20*time.Second) {
			t.Fatalf("node %d did not warn of the lost lease; stderr:\n%s", i, n.stderr.String())
		}
	}
	srv.Restart()
	// The leases, kept alive by nobody now, expire and take the nodes'
	// join keys: only then are the ranks let go.
	waitKeysGone(t, srv.Endpoint, "/mpspawn/job/r/00000000/join/")
	writeFIFO(t, filepath.Join(dir, "go0"))
	writeFIFO(t, filepath.Join(dir, "go1"))
	for i, n := range nodes {
		if code := n.wait(t); code != 1 || !strings.Contains(n.stdout.String(), "done") || !strings.Contains(n.stderr.String(), "could not confirm that the other nodes succeeded") {
			t.Errorf("node %d exited %d, stdout %q; want 1 (unconfirmed) and done; stderr:\n%s", i, code, n.stdout.String(), n.stderr.String())
		}
	}
}

// waitKeysGone waits, bounded, until no key under prefix is left in etcd.
func waitKeysGone(t *testing.T, endpoint, prefix string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	left := resp.Count
	if left == 0 {
		return
	}
	for wr := range cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				left--
			}
		}
		if left == 0 {
			return
		}
	}
	t.Fatalf("%d keys under %s still there after 20s", left, prefix)
}

// TestMultinodeTLS: --rdzv-conf cacert, cert and key reach an etcd that
// requires TLS client certificates; without them the endpoint is
// unreachable (one line, exit 2).
func TestMultinodeTLS(t *testing.T) {
	srv, files := etcdtest.StartTLS(t)
	conf := "lease_ttl=1,connect_timeout=2,cacert=" + files.CA + ",cert=" + files.Cert + ",key=" + files.Key
	var nodes []*node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		nodes = append(nodes, startNode(t, "--rdzv-backend", "etcd", "--rdzv-endpoint", srv.Endpoint, "--rdzv-id", "tls",
			"--nnodes", "2", "--local-addr", addr, "--rdzv-conf", conf, "--no-python", "sh", "-c", "echo world=$WORLD_SIZE"))
	}
	for i, n := range nodes {
		if code := n.wait(t); code != 0 || !strings.Contains(n.stdout.String(), "world=2") {
			t.Errorf("node %d over TLS exited %d, stdout %q; want 0, world=2; stderr:\n%s", i, code, n.stdout.String(), n.stderr.String())
		}
	}
	plain := startNode(t, "--rdzv-backend", "etcd", "--rdzv-endpoint", srv.Endpoint, "--rdzv-id", "plain",
		"--nnodes", "2", "--rdzv-conf", "connect_timeout=1", "--no-python", "true")
	if code := plain.wait(t); code != 2 || !strings.Contains(plain.stderr.String(), "etcd not reachable within 1s") {
		t.Errorf("node without TLS exited %d; want 2 and not reachable; stderr:\n%s", code, plain.stderr.String())
	}
}

// TestMultinodeInterruptedWaiting: SIGINT while a node waits for the
// others ends the wait at once, exit 130, no rank started.
func TestMultinodeInterruptedWaiting(t *testing.T) {
	srv := etcdtest.Start(t)
	n := startNode(t, etcdArgs(srv, "wait", "127.0.0.2", "2", "--no-python", "sh", "-c", "echo started")...)
	if !n.stderr.waitFor("mpspawn: rendezvous wait: 1/2 nodes (127.0.0.2), waiting up to", 20*time.Second) {
		t.Fatalf("no status line; stderr:\n%s", n.stderr.String())
	}
	if err := n.cmd.Process.Signal(unix.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := n.wait(t); code != 130 || n.stdout.Len() != 0 || !strings.Contains(n.stderr.String(), "mpspawn: SIGINT while waiting for the rendezvous: no rank started") {
		t.Errorf("exited %d, stdout %q; want 130, nothing started; stderr:\n%s", code, n.stdout.String(), n.stderr.String())
	}
}
