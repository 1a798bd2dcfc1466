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
// node hosts is SIGKILLed mid-job. That node says so and stops its ranks
// at once; the other node, cut off, stops its own within the lease TTL.
// Neither can confirm the job's result: both exit 1; nothing is left
// running.
func TestMultinodeC10dHostedEtcdDies(t *testing.T) {
	bin := etcdtest.Binary(t)
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("127.0.0.2:%d", port)
	dir := t.TempDir()
	mkfifos(t, dir, "up0", "up1")
	script := `echo $$ > ` + dir + `/pid$GROUP_RANK; echo up > ` + dir + `/up$GROUP_RANK; exec sleep 60`
	args := func(addr string) []string {
		return []string{"--rdzv-backend", "c10d", "--rdzv-endpoint", ep, "--rdzv-id", "job", "--nnodes", "2",
			"--local-addr", addr, "--rdzv-conf", "lease_ttl=2,join_timeout=30,close_timeout=5,etcd_binary=" + bin, "--no-python", "sh", "-c", script}
	}
	n0 := startNode(t, args("127.0.0.2")...)
	n1 := startNode(t, args("127.0.0.3")...)
	readLine(t, filepath.Join(dir, "up0"))
	readLine(t, filepath.Join(dir, "up1"))
	etcdPid := childNamed(t, n0.cmd.Process.Pid, "etcd")
	killed := time.Now()
	if err := unix.Kill(etcdPid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i, n := range []*node{n0, n1} {
		if code := n.wait(t); code != 1 || !strings.Contains(n.stderr.String(), "lost etcd") {
			t.Errorf("node %d exited %d; want 1, saying it lost etcd; stderr:\n%s", i, code, n.stderr.String())
		}
	}
	if !strings.Contains(n0.stderr.String(), "exited during the job") {
		t.Errorf("node 0 did not say its etcd server exited; stderr:\n%s", n0.stderr.String())
	}
	if took := n0.ended.Sub(killed); took > 3*time.Second {
		t.Errorf("node 0 took %v to stop after its etcd server died; want it at once", took)
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
