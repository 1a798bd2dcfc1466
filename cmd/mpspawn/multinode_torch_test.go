//go:build linux

package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
)

// TestMultinodeDDP: a 2-node × 2-rank gloo DDP job gives byte for byte the
// parameters of the single-node 4-rank job, through an etcd rendezvous and
// through torchrun's c10d launch line (node 0 hosts the etcd server).
func TestMultinodeDDP(t *testing.T) {
	py, script, dir, want := singleNodeDDP(t)
	srv := etcdtest.Start(t)
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	c10dEndpoint := fmt.Sprintf("127.0.0.2:%d", port)
	runs := []struct {
		name string
		args func(addr string) []string
	}{
		{"etcd", func(addr string) []string {
			return []string{"--rdzv-backend", "etcd", "--rdzv-endpoint", srv.Endpoint, "--rdzv-id", "ddp", "--local-addr", addr}
		}},
		// torchrun's own line, underscores and all, with --local_addr.
		{"c10d", func(addr string) []string {
			return []string{"--rdzv_backend", "c10d", "--rdzv_endpoint", c10dEndpoint, "--rdzv_id", "ddp", "--local_addr", addr}
		}},
	}
	for _, run := range runs {
		t.Run(run.name, func(t *testing.T) {
			out := filepath.Join(dir, run.name)
			var wg sync.WaitGroup
			var nodes []*node
			for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
				args := append(run.args(addr), "--nnodes", "2", "--nproc_per_node", "2", "--python", py, script, "--out", out)
				n := startNode(t, args...)
				nodes = append(nodes, n)
				wg.Go(func() {
					if code := n.wait(t); code != 0 {
						t.Errorf("node %s exited %d:\n%s", addr, code, n.stderr.String())
					}
				})
			}
			wg.Wait()
			if run.name == "c10d" {
				if s := nodes[0].stderr.String(); !strings.Contains(s, "hosting an etcd server at "+c10dEndpoint) {
					t.Errorf("node 127.0.0.2 did not host the etcd server:\n%s", s)
				}
				if conn, err := net.Dial("tcp", c10dEndpoint); err == nil {
					conn.Close()
					t.Errorf("%s still served after the job", c10dEndpoint)
				}
			}
			for r := range 4 {
				got, err := os.ReadFile(filepath.Join(out, fmt.Sprintf("rank%d.txt", r)))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s rank %d parameters differ from the single-node 4-rank job's (%v)", run.name, r, err)
				}
			}
		})
	}
}

// singleNodeDDP runs examples/python/ddp_train.py as one node of 4 ranks
// and returns the interpreter, the script, a directory for the test and
// rank 0's parameters: what a job of several nodes must give byte for
// byte. It skips where /usr/bin/python3 has no torch (fails in CI).
func singleNodeDDP(t *testing.T) (py, script, dir string, want []byte) {
	t.Helper()
	ok, err := torchCondition()
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Skip("python3-torch not installed (apt-get install python3-torch)")
	}
	py, _ = torchPython()
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	script = filepath.Join(repo, "examples", "python", "ddp_train.py")
	dir = t.TempDir()
	single := startNode(t, "--standalone", "--nproc-per-node", "4", "--python", py, script, "--out", filepath.Join(dir, "single"))
	if code := single.wait(t); code != 0 {
		t.Fatalf("single node exited %d:\n%s", code, single.stderr.String())
	}
	if want, err = os.ReadFile(filepath.Join(dir, "single", "rank0.txt")); err != nil {
		t.Fatal(err)
	}
	return py, script, dir, want
}
