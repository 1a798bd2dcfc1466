//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/internal/procfs"
	"github.com/mpspawn/mpspawn/internal/proctest"
	"golang.org/x/sys/unix"
)

// TestMultinodeC10dHostedEtcdDies: the etcd server that the c10d endpoint's
// node hosts is SIGKILLed mid-job. That node says so; its rank's failure
// still stops it with the rank's code; the other node, cut off, goes on
// with its own ranks and ends when they do, within close_timeout of them
// (it used to wait for ever to mark itself done); nothing is left running.
func TestMultinodeC10dHostedEtcdDies(t *testing.T) {
	bin := etcdtest.Binary(t)
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("127.0.0.2:%d", port)
	dir := t.TempDir()
	mkfifos(t, dir, "up0", "up1", "go0", "go1")
	// Each node's rank says it runs, then waits for the test's word: node
	// 0's rank then exits 3, node 1's exits 0.
	script := `echo $$ > ` + dir + `/pid$GROUP_RANK; echo up > ` + dir + `/up$GROUP_RANK; read x < ` + dir + `/go$GROUP_RANK; [ "$GROUP_RANK" = 0 ] && exit 3; exit 0`
	args := func(addr string) []string {
		return []string{"--rdzv-backend", "c10d", "--rdzv-endpoint", ep, "--rdzv-id", "job", "--nnodes", "2",
			"--local-addr", addr, "--rdzv-conf", "lease_ttl=2,join_timeout=30,close_timeout=5,etcd_binary=" + bin, "--no-python", "sh", "-c", script}
	}
	n0 := startNode(t, args("127.0.0.2")...)
	n1 := startNode(t, args("127.0.0.3")...)
	readLine(t, filepath.Join(dir, "up0"))
	readLine(t, filepath.Join(dir, "up1"))
	etcdPid := childNamed(t, n0.cmd.Process.Pid, "etcd")
	if err := unix.Kill(etcdPid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !n0.stderr.waitFor("exited during the job", nodeTimeout) {
		t.Fatalf("node 0 did not say its etcd server exited; stderr:\n%s", n0.stderr.String())
	}
	writeFIFO(t, filepath.Join(dir, "go0"))
	if code := n0.wait(t); code != 3 {
		t.Errorf("node 0 exited %d; want 3 (its rank's code); stderr:\n%s", code, n0.stderr.String())
	}
	writeFIFO(t, filepath.Join(dir, "go1"))
	// Node 1's rank succeeded; it cannot tell anyone, and does not wait
	// for ever trying (close_timeout bounds it).
	if code := n1.wait(t); code != 0 || !strings.Contains(n1.stderr.String(), "could not tell the other nodes within 5s (close_timeout)") {
		t.Errorf("node 1 exited %d; want 0, saying it could not tell the other nodes; stderr:\n%s", code, n1.stderr.String())
	}
	for i := range 2 {
		if pid := readPid(t, filepath.Join(dir, "pid"+strconv.Itoa(i))); !proctest.WaitExit(pid, time.Second) {
			t.Errorf("node %d's rank %d still runs after its node exited", i, pid)
		}
	}
}

// childNamed returns the pid of parent's child whose command name is comm.
func childNamed(t *testing.T, parent int, comm string) int {
	t.Helper()
	for _, pid := range procfs.Children(parent) {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err == nil && strings.TrimSpace(string(b)) == comm {
			return pid
		}
	}
	t.Fatalf("pid %d has no child %q", parent, comm)
	return 0
}
