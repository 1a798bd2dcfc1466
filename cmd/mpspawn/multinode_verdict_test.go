//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/internal/proctest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestMultinodeVerdictC10dHostKilled: the launcher that hosts the c10d
// store is SIGKILLed while every rank sleeps (its etcd server goes with
// it). The other node cannot confirm anything any more: it stops its
// ranks and exits 1 within the lease TTL and the close bound, saying that
// it lost etcd; no rank is left.
func TestMultinodeVerdictC10dHostKilled(t *testing.T) {
	bin := etcdtest.Binary(t)
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("127.0.0.2:%d", port)
	dir := t.TempDir()
	mkfifos(t, dir, "up0", "up1")
	script := `echo $$ > ` + dir + `/pid$GROUP_RANK; echo up > ` + dir + `/up$GROUP_RANK; exec sleep 60`
	const ttl, closeBound = 2 * time.Second, 3 * time.Second
	args := func(addr string) []string {
		return []string{"--rdzv-backend", "c10d", "--rdzv-endpoint", ep, "--rdzv-id", "job", "--nnodes", "2", "--local-addr", addr,
			"--rdzv-conf", "lease_ttl=2,join_timeout=30,close_timeout=3,etcd_binary=" + bin, "--no-python", "sh", "-c", script}
	}
	n0 := startNode(t, args("127.0.0.2")...)
	if !n0.stderr.waitFor("hosting an etcd server", nodeTimeout) {
		t.Fatalf("node 0 does not host the store; stderr:\n%s", n0.stderr.String())
	}
	n1 := startNode(t, args("127.0.0.3")...)
	readLine(t, filepath.Join(dir, "up0"))
	readLine(t, filepath.Join(dir, "up1"))
	killed := time.Now()
	if err := n0.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	code := n1.wait(t)
	took := n1.ended.Sub(killed)
	if code != 1 || !strings.Contains(n1.stderr.String(), "lost etcd") {
		t.Errorf("node 1 exited %d; want 1, saying it lost etcd; stderr:\n%s", code, n1.stderr.String())
	}
	// The bound, plus a second for stopping the ranks and the test's own
	// scheduling on a loaded machine.
	if limit := ttl + closeBound + time.Second; took > limit {
		t.Errorf("node 1 exited %v after the host was SIGKILLed; want within %v (lease TTL + close bound)", took, limit)
	}
	if pid := readPid(t, filepath.Join(dir, "pid1")); !proctest.WaitExit(pid, time.Second) {
		t.Errorf("node 1's rank %d still runs after its node exited", pid)
	}
	t.Logf("node 1 exited %d, %v after the host was SIGKILLed (lease TTL %v)", code, took, ttl)
}

// TestMultinodeVerdictEtcdLost: the etcd server dies while the ranks run
// and does not come back; then node 1's rank fails and node 0's succeeds.
// No node exits 0: node 1 exits with its rank's code, node 0 with 1 and a
// line saying what it could not confirm and that its ranks succeeded.
// Each ends at once, not after the publish or close bounds (30 s here).
func TestMultinodeVerdictEtcdLost(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	mkfifos(t, dir, "up0", "up1", "go0", "go1")
	script := `echo up > ` + dir + `/up$GROUP_RANK; read x < ` + dir + `/go$GROUP_RANK; [ $GROUP_RANK = 1 ] && exit 3; exit 0`
	var nodes []*node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		args := etcdArgs(srv, "lost", addr, "2", "--no-python", "sh", "-c", script)
		for i := range args {
			if args[i] == "lease_ttl=1,join_timeout=20" {
				args[i] += ",close_timeout=30"
			}
		}
		nodes = append(nodes, startNode(t, args...))
	}
	readLine(t, filepath.Join(dir, "up0"))
	readLine(t, filepath.Join(dir, "up1"))
	srv.Stop()
	for i, n := range nodes {
		if !n.stderr.waitFor("lost the etcd lease", 20*time.Second) {
			t.Fatalf("node %d did not warn of the lost lease; stderr:\n%s", i, n.stderr.String())
		}
	}
	for i, want := range []int{3, 1} {
		n := nodes[1-i]
		released := time.Now()
		writeFIFO(t, filepath.Join(dir, fmt.Sprintf("go%d", 1-i)))
		if code := n.wait(t); code != want {
			t.Errorf("node %d exited %d; want %d; stderr:\n%s", 1-i, code, want, n.stderr.String())
		}
		if took := n.ended.Sub(released); took > 5*time.Second {
			t.Errorf("node %d took %v to exit after its rank was let go; want it at once (etcd is known gone)", 1-i, took)
		}
	}
	if s := nodes[0].stderr.String(); !strings.Contains(s, "this node's 1 ranks succeeded, but this node could not confirm that the other nodes succeeded") || !strings.Contains(s, "lost etcd") {
		t.Errorf("node 0 does not say what it could not confirm and why:\n%s", s)
	}
}

// TestMultinodeVerdictForged: with the ranks running, a writer to the
// run's etcd forges a failure with exit code 0 on node 0's own lease and
// a "done" mark for node 1 on no lease. Both are ignored with a warning:
// node 0, done first, does not take node 1 for done and, node 1 still
// running past close_timeout, exits 1 saying it could not confirm; node 1
// then succeeds, confirms every member done and exits 0.
func TestMultinodeVerdictForged(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	mkfifos(t, dir, "up0", "up1", "go0", "go1")
	script := `echo up > ` + dir + `/up$GROUP_RANK; read x < ` + dir + `/go$GROUP_RANK; exit 0`
	var nodes []*node
	for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
		args := etcdArgs(srv, "forged", addr, "2", "--no-python", "sh", "-c", script)
		for i := range args {
			if args[i] == "lease_ttl=1,join_timeout=20" {
				args[i] += ",close_timeout=2"
			}
		}
		nodes = append(nodes, startNode(t, args...))
	}
	readLine(t, filepath.Join(dir, "up0"))
	readLine(t, filepath.Join(dir, "up1"))
	failKey, doneKey := forgeVerdict(t, srv.Endpoint, "/mpspawn/forged/r/00000000/")
	for i, n := range nodes {
		for _, k := range []string{failKey, doneKey} {
			if !n.stderr.waitFor(fmt.Sprintf("ignored etcd key %q", k), 20*time.Second) {
				t.Fatalf("node %d did not warn of %s; stderr:\n%s", i, k, n.stderr.String())
			}
		}
	}
	writeFIFO(t, filepath.Join(dir, "go0"))
	if code := nodes[0].wait(t); code != 1 || !strings.Contains(nodes[0].stderr.String(), "some were still running after 2s (close_timeout)") {
		t.Errorf("node 0 exited %d; want 1, not confirming node 1 (its done mark forged); stderr:\n%s", code, nodes[0].stderr.String())
	}
	writeFIFO(t, filepath.Join(dir, "go1"))
	if code := nodes[1].wait(t); code != 0 {
		t.Errorf("node 1 exited %d; want 0 (the forged failure ignored); stderr:\n%s", code, nodes[1].stderr.String())
	}
}

// forgeVerdict writes, under round prefix rp, a failure with exit code 0
// on the lease of the node whose address is 127.0.0.2 and a lease-less
// done mark for the node at 127.0.0.3; it returns both keys.
func forgeVerdict(t *testing.T, endpoint, rp string) (failKey, doneKey string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, rp+"join/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 2 {
		t.Fatalf("join records: %v, %d of them; want 2", err, len(resp.Kvs))
	}
	var lease0 int64
	var id1 string
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), rp+"join/")
		if strings.HasPrefix(id, "127.0.0.2-") {
			lease0 = kv.Lease
		} else {
			id1 = id
		}
	}
	failKey, doneKey = rp+"fail", rp+"done/"+id1
	fail := `{"node_rank":0,"host":"h","addr":"127.0.0.2","rank":0,"local_rank":0,"pid":1,"exit_code":0,"time":"2024-01-01T00:00:00Z"}`
	if _, err := cli.Put(ctx, failKey, fail, clientv3.WithLease(clientv3.LeaseID(lease0))); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, doneKey, ""); err != nil {
		t.Fatal(err)
	}
	return failKey, doneKey
}

// TestMultinodeTokenNeedsC10d: --rdzv-conf token= with --rdzv-backend etcd
// is refused with one line, exit 2: it would protect nothing there.
func TestMultinodeTokenNeedsC10d(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, "--rdzv-backend", "etcd", "--rdzv-endpoint", "127.0.0.1:2379", "--rdzv-id", "tok", "--nnodes", "2",
		"--rdzv-conf", "token="+tok, "--no-python", "true")
	code := n.wait(t)
	lines := strings.Split(strings.TrimSpace(n.stderr.String()), "\n")
	if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "only --rdzv-backend c10d takes a token") {
		t.Errorf("exited %d, stderr %q; want 2 and one line saying a token needs c10d", code, n.stderr.String())
	}
}

// TestMultinodeEtcdLostWhileJoining: etcd dies while a node waits for the
// other: it ends within the lease TTL and a bound, exit 2, saying it lost
// etcd and started no rank (not after join_timeout, not "1 of 2 nodes
// joined").
func TestMultinodeEtcdLostWhileJoining(t *testing.T) {
	srv := etcdtest.Start(t)
	n := startNode(t, etcdArgs(srv, "joining", "127.0.0.2", "2", "--no-python", "true")...)
	if !n.stderr.waitFor("1/2 nodes", 20*time.Second) {
		t.Fatalf("the node does not wait for the other; stderr:\n%s", n.stderr.String())
	}
	stopped := time.Now()
	srv.Stop()
	code := n.wait(t)
	if s := n.stderr.String(); code != 2 || !strings.Contains(s, "lost etcd at "+srv.Endpoint) || strings.Contains(s, "nodes joined") {
		t.Errorf("exited %d; want 2, saying it lost etcd; stderr:\n%s", code, s)
	}
	if took := n.ended.Sub(stopped); took > 5*time.Second {
		t.Errorf("exited %v after etcd died; want within the lease TTL (1s) and a bound", took)
	}
}
