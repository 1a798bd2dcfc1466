//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/internal/proctest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// hostedPid finds the pid of the etcd server a node says it hosts.
var hostedPid = regexp.MustCompile(`hosting an etcd server at \S+ \(pid (\d+)\)`)

// runC10d starts n launchers of one c10d job at endpoint ep (extra flags
// each, by node) and waits for them all; it checks that every one exits
// 0 in a world of n ranks with distinct ranks, that exactly one hosted
// the etcd server, and that the server is gone once the launchers are.
func runC10d(t *testing.T, ep string, n int, extra func(i int) []string) []*node {
	t.Helper()
	bin := etcdtest.Binary(t)
	var nodes []*node
	for i := range n {
		args := []string{"--rdzv-backend", "c10d", "--rdzv-endpoint", ep, "--rdzv-id", "job", "--nnodes", strconv.Itoa(n),
			"--rdzv-conf", "lease_ttl=2,join_timeout=30,etcd_binary=" + bin}
		args = append(append(args, extra(i)...), "--no-python", "sh", "-c", "echo world=$WORLD_SIZE rank=$RANK")
		nodes = append(nodes, startNode(t, args...))
	}
	var ranks []string
	hosts := 0
	for i, nd := range nodes {
		if code := nd.wait(t); code != 0 || !strings.Contains(nd.stdout.String(), fmt.Sprintf("world=%d ", n)) {
			t.Errorf("node %d exited %d, stdout %q; want 0 in a world of %d; stderr:\n%s", i, code, nd.stdout.String(), n, nd.stderr.String())
		}
		ranks = append(ranks, strings.TrimSpace(nd.stdout.String()))
		if m := hostedPid.FindStringSubmatch(nd.stderr.String()); m != nil {
			hosts++
			if pid, _ := strconv.Atoi(m[1]); !proctest.WaitExit(pid, time.Second) {
				t.Errorf("the etcd server (pid %d) still runs after its node exited", pid)
			}
		}
	}
	slices.Sort(ranks)
	if hosts != 1 || len(slices.Compact(ranks)) != n {
		t.Errorf("%d nodes hosted an etcd server, ranks %q; want exactly one, and %d distinct ranks", hosts, ranks, n)
	}
	return nodes
}

// TestMultinodeC10dLocalhost: torchrun's own single-machine c10d lines,
// `--rdzv-endpoint localhost:P` and `127.0.0.1:P` with no --local-addr,
// with two and three launchers started at once: one hosts, all join, the
// job runs.
func TestMultinodeC10dLocalhost(t *testing.T) {
	for _, c := range []struct {
		host string
		n    int
	}{{"localhost", 2}, {"127.0.0.1", 2}, {"localhost", 3}, {"127.0.0.1", 3}} {
		t.Run(fmt.Sprintf("%s-%d", c.host, c.n), func(t *testing.T) {
			port, err := etcdtest.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			runC10d(t, fmt.Sprintf("%s:%d", c.host, port), c.n, func(int) []string { return nil })
		})
	}
}

// TestMultinodeC10dSquatter: an etcd that is not this run's server holds
// the endpoint's port: the node that would host says so and exits 2
// instead of joining it.
func TestMultinodeC10dSquatter(t *testing.T) {
	srv := etcdtest.Start(t)
	n := startNode(t, "--rdzv-backend", "c10d", "--rdzv-endpoint", srv.Endpoint, "--rdzv-id", "job", "--nnodes", "2",
		"--rdzv-conf", "connect_timeout=1", "--no-python", "true")
	want := "mpspawn: error: --rdzv-endpoint " + srv.Endpoint + " is not this run's etcd server: no record of this run's host within 1s (connect_timeout): something else serves the port; not joining it\n"
	if code := n.wait(t); code != 2 || !strings.HasSuffix(n.stderr.String(), want) {
		t.Errorf("exited %d; want 2 and %q; stderr:\n%s", code, want, n.stderr.String())
	}
}

// TestMultinodeC10dToken: with a token (a file on node 0, the environment
// on node 1) the hosted etcd requires the job's user: a node with another
// token is refused (exit 2), and a client without it can write nothing,
// while the job runs and succeeds.
func TestMultinodeC10dToken(t *testing.T) {
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("127.0.0.2:%d", port)
	dir := t.TempDir()
	mkfifos(t, dir, "up0", "up1", "go0", "go1")
	for name, tok := range map[string]string{"token": "s3cret\n", "wrong": "guess"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	script := `echo up > ` + dir + `/up$GROUP_RANK; read x < ` + dir + `/go$GROUP_RANK; echo world=$WORLD_SIZE`
	args := func(addr, conf string) []string {
		return []string{"--rdzv-backend", "c10d", "--rdzv-endpoint", ep, "--rdzv-id", "job", "--nnodes", "2", "--local-addr", addr,
			"--rdzv-conf", "lease_ttl=2,join_timeout=30,connect_timeout=3,etcd_binary=" + etcdtest.Binary(t) + conf, "--no-python", "sh", "-c", script}
	}
	n0 := startNode(t, args("127.0.0.2", ",token="+filepath.Join(dir, "token"))...)
	t.Setenv(envRdzvToken, "s3cret")
	n1 := startNode(t, args("127.0.0.3", "")...)
	readLine(t, filepath.Join(dir, "up0"))
	readLine(t, filepath.Join(dir, "up1"))
	bad := startNode(t, args("127.0.0.4", ",token="+filepath.Join(dir, "wrong"))...)
	if code := bad.wait(t); code != 2 || !strings.Contains(bad.stderr.String(), "is not this run's etcd server: it refused this node's token") {
		t.Errorf("node with the wrong token exited %d; want 2, refused; stderr:\n%s", code, bad.stderr.String())
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/mpspawn/job/r/00000000/fail", `{"exit_code":3}`); err == nil {
		t.Error("a client without the token wrote into the run")
	}
	writeFIFO(t, filepath.Join(dir, "go0"))
	writeFIFO(t, filepath.Join(dir, "go1"))
	for i, n := range []*node{n0, n1} {
		if code := n.wait(t); code != 0 || !strings.Contains(n.stdout.String(), "world=2") {
			t.Errorf("node %d exited %d, stdout %q; want 0, world=2; stderr:\n%s", i, code, n.stdout.String(), n.stderr.String())
		}
	}
}

// TestMultinodeC10dTLS: the hosted etcd serves over TLS with the
// cacert, cert and key of --rdzv-conf, requiring client certificates.
func TestMultinodeC10dTLS(t *testing.T) {
	f := etcdtest.WriteCerts(t, t.TempDir())
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("127.0.0.1:%d", port)
	runC10d(t, ep, 2, func(int) []string {
		return []string{"--rdzv-conf", "lease_ttl=2,join_timeout=30,etcd_binary=" + etcdtest.Binary(t) + ",cacert=" + f.CA + ",cert=" + f.Cert + ",key=" + f.Key}
	})
}

// TestMultinodeNNodesDisagree: a node started with --nnodes 2 and one
// with --nnodes 3 are refused, each with one line naming both, exit 2.
func TestMultinodeNNodesDisagree(t *testing.T) {
	srv := etcdtest.Start(t)
	var wg sync.WaitGroup
	for i, c := range []struct{ addr, n, other string }{{"127.0.0.2", "2", "3"}, {"127.0.0.3", "3", "2"}} {
		nd := startNode(t, etcdArgs(srv, "job", c.addr, c.n, "--no-python", "true")...)
		wg.Go(func() {
			want := fmt.Sprintf("started with --nnodes %s and this node with --nnodes %s: every node of a job passes the same --nnodes\n", c.other, c.n)
			if code := nd.wait(t); code != 2 || !strings.HasSuffix(nd.stderr.String(), want) {
				t.Errorf("node %d exited %d; want 2 and a line ending %q; stderr:\n%s", i, code, want, nd.stderr.String())
			}
		})
	}
	wg.Wait()
}

// TestMultinodeC10dNoHost: the endpoint names another node and nothing
// answers there: one line that says who hosts it and what to check,
// --local-addr included, exit 2.
func TestMultinodeC10dNoHost(t *testing.T) {
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("127.0.0.2:%d", port)
	n := startNode(t, "--rdzv-backend", "c10d", "--rdzv-endpoint", ep, "--rdzv-id", "job", "--nnodes", "2",
		"--local-addr", "127.0.0.3", "--rdzv-conf", "connect_timeout=1", "--no-python", "true")
	s := ""
	if code := n.wait(t); code != 2 {
		t.Errorf("exited %d; want 2", code)
	}
	s = n.stderr.String()
	if !strings.HasPrefix(s, "mpspawn: error: --rdzv-endpoint "+ep+": no etcd server answers within 1s") || strings.Count(s, "\n") != 1 ||
		!strings.Contains(s, "the node whose address is 127.0.0.2 hosts it (its --local-addr") || !strings.Contains(s, "this node's is 127.0.0.3") {
		t.Errorf("stderr = %q; want one line naming the host to check and --local-addr", s)
	}
}
