//go:build linux

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/internal/proctest"
)

// sshCluster is sshd servers on 127.0.0.2, 127.0.0.3, ..., reached as
// node1, node2, ... through the ssh config the test writes.
type sshCluster struct {
	dir    string
	config string // ssh -F file
	bin    string // a path named mpspawn that runs this test binary as mpspawn
}

// startSSHD starts n sshd servers, stopped by pid at the test's end. It
// skips unless sshd is installed and the test runs as root, except under
// CI=true, where it must run.
func startSSHD(t *testing.T, n int) *sshCluster {
	t.Helper()
	_, err := os.Stat("/usr/sbin/sshd")
	if err != nil || os.Getuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: want /usr/sbin/sshd and root (scripts/install-test-deps.sh): %v, uid %d", err, os.Getuid())
		}
		t.Skipf("needs /usr/sbin/sshd (apt-get install openssh-server) and root: %v, uid %d", err, os.Getuid())
	}
	c := &sshCluster{dir: t.TempDir()}
	for _, k := range []string{"hostkey", "clientkey"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(c.dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	_ = os.MkdirAll("/run/sshd", 0o755) // sshd's privilege separation directory
	var conf strings.Builder
	for i := range n {
		ip := fmt.Sprintf("127.0.0.%d", i+2)
		port := c.sshd(t, ip)
		fmt.Fprintf(&conf, "Host node%d\n  HostName %s\n  Port %d\n  User root\n  IdentityFile %s\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
			i+1, ip, port, filepath.Join(c.dir, "clientkey"))
	}
	// node9: nothing listens there.
	free, _ := etcdtest.FreePort()
	fmt.Fprintf(&conf, "Host node9\n  HostName 127.0.0.9\n  Port %d\n  User root\n  IdentityFile %s\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n",
		free, filepath.Join(c.dir, "clientkey"))
	c.config = filepath.Join(c.dir, "ssh_config")
	if err := os.WriteFile(c.config, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c.bin = filepath.Join(c.dir, "bin", "mpspawn")
	if err := os.MkdirAll(filepath.Dir(c.bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, c.bin); err != nil {
		t.Fatal(err)
	}
	return c
}

// sshd starts one sshd on ip and returns its port once it listens.
func (c *sshCluster) sshd(t *testing.T, ip string) int {
	t.Helper()
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(c.dir, "sshd_"+ip)
	text := fmt.Sprintf("ListenAddress %s:%d\nHostKey %s\nUsePAM no\nPidFile none\nStrictModes no\nPermitRootLogin yes\nAuthorizedKeysFile %s\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n",
		ip, port, filepath.Join(c.dir, "hostkey"), filepath.Join(c.dir, "clientkey.pub"))
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", conf)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		said := false
		for sc.Scan() {
			if !said && strings.Contains(sc.Text(), "Server listening on") {
				said = true
				ready <- true
			}
		}
		if !said {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("sshd on %s exited before it listened", ip)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("sshd on %s did not listen within 10s", ip)
	}
	return port
}

// driver is a running `mpspawn --hosts ...`.
type driver struct {
	cmd            *exec.Cmd
	stdout         io.Reader
	stderr         bytes.Buffer
	started, ended time.Time
}

// start starts the driver in dir with args, through the cluster's ssh config.
func (c *sshCluster) start(t *testing.T, dir string, args ...string) *driver {
	t.Helper()
	args = append([]string{"--ssh", "ssh -F " + c.config, "--rdzv-conf", "lease_ttl=2,join_timeout=30,etcd_binary=" + etcdtest.Binary(t)}, args...)
	d := &driver{cmd: exec.Command(c.bin, args...)}
	d.cmd.Dir, d.cmd.Stderr = dir, &d.stderr
	var err error
	if d.stdout, err = d.cmd.StdoutPipe(); err != nil {
		t.Fatal(err)
	}
	d.started = time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.cmd.Process.Kill() })
	return d
}

// wait reads the rest of stdout and waits (at most 2 minutes).
func (d *driver) wait(t *testing.T) (string, int) {
	t.Helper()
	out := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(d.stdout); out <- b }()
	timer := time.AfterFunc(2*time.Minute, func() { _ = d.cmd.Process.Kill() })
	defer timer.Stop()
	b := <-out
	_ = d.cmd.Wait()
	d.ended = time.Now()
	return string(b), d.cmd.ProcessState.ExitCode()
}

// rankPids reads the pid files the ranks wrote in dir.
func rankPids(t *testing.T, dir string, n int) []int {
	t.Helper()
	var pids []int
	for r := range n {
		b, err := os.ReadFile(filepath.Join(dir, "pid."+strconv.Itoa(r)))
		if err != nil {
			t.Fatalf("rank %d wrote no pid file: %v", r, err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		pids = append(pids, pid)
	}
	return pids
}

// sleeper is a rank that writes its pid, says ready and sleeps.
const sleeper = `echo $$ > pid.$RANK; echo ready; exec sleep 60`

// TestSSHFailure: a rank failing on the second host stops every host's
// ranks; the driver names host, rank, exit code and message once, and
// exits with the rank's code.
func TestSSHFailure(t *testing.T) {
	c := startSSHD(t, 2)
	dir := t.TempDir()
	// Rank 3 fails once every rank has written its pid (at most 10s on).
	script := `echo $$ > pid.$RANK; if [ "$RANK" = 3 ]; then i=0; while [ $i -lt 200 ] && ! [ -f pid.0 -a -f pid.1 -a -f pid.2 ]; do sleep 0.05; i=$((i+1)); done; echo boom-from-rank-3 >&2; exit 7; fi; exec sleep 60`
	d := c.start(t, dir, "--hosts", "node1:2,node2:2", "--remote-mpspawn", c.bin, "--no-python", "sh", "-c", script)
	_, code := d.wait(t)
	errText := d.stderr.String()
	if code != 7 || !strings.Contains(errText, "on node2 FAILED") || !strings.Contains(errText, "boom-from-rank-3") ||
		!strings.Contains(errText, "exitcode  : 7") || strings.Count(errText, "Root Cause") != 1 {
		t.Errorf("driver exited %d; want 7 with one root cause on node2 (rank 3, exitcode 7, its message); stderr:\n%s", code, errText)
	}
	if took := d.ended.Sub(d.started); took > 30*time.Second {
		t.Errorf("the job took %v after a rank failed; want far less than the ranks' 60s", took)
	}
	for r, pid := range rankPids(t, dir, 4) {
		if !proctest.WaitExit(pid, time.Second) {
			t.Errorf("rank %d (pid %d) still runs 1s after the driver exited", r, pid)
		}
	}
}

// TestSSHStopDriver: Ctrl-C, and SIGKILL, of the driver leave nothing
// running on any host.
func TestSSHStopDriver(t *testing.T) {
	c := startSSHD(t, 2)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGKILL} {
		t.Run(launcherSignalName(sig), func(t *testing.T) {
			dir := t.TempDir()
			d := c.start(t, dir, "--hosts", "node1:1,node2:1", "--remote-mpspawn", c.bin, "--grace-period", "2s", "--no-python", "sh", "-c", sleeper)
			sc := bufio.NewScanner(d.stdout)
			for n := 0; n < 2 && sc.Scan(); {
				if strings.HasSuffix(sc.Text(), "ready") {
					n++
				}
			}
			pids := rankPids(t, dir, 2)
			_ = d.cmd.Process.Signal(sig)
			_, code := d.wait(t)
			if sig == syscall.SIGINT && code != 130 {
				t.Errorf("driver exited %d after SIGINT; want 130; stderr:\n%s", code, d.stderr.String())
			}
			for r, pid := range pids {
				if !proctest.WaitExit(pid, 3*time.Second) { // lease TTL 2s + 1s
					t.Errorf("rank %d (pid %d) still runs 3s after the driver's %v", r, pid, sig)
				}
			}
		})
	}
}

func launcherSignalName(s syscall.Signal) string {
	if s == syscall.SIGKILL {
		return "SIGKILL"
	}
	return "SIGINT"
}

// TestSSHSetupErrors: an unreachable host and a host without mpspawn are
// one line each, exit 2, within the ssh timeout; several failing hosts are
// one line each, every one in the same form.
func TestSSHSetupErrors(t *testing.T) {
	c := startSSHD(t, 1)
	for _, tc := range []struct {
		name string
		args []string
		want []string // the lines' starts, in the host list's order
	}{
		{"unreachable", []string{"--hosts", "node1,node9", "--remote-mpspawn", c.bin, "--ssh-timeout", "3"}, []string{"host node9: ssh failed: "}},
		{"missing", []string{"--hosts", "node1", "--remote-mpspawn", "/nonexistent/mpspawn"}, []string{"host node1: no mpspawn there"}},
		{"both", []string{"--hosts", "node9,node1", "--remote-mpspawn", "/nonexistent/mpspawn", "--ssh-timeout", "3"},
			[]string{"host node9: ssh failed: ", "host node1: no mpspawn there"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := c.start(t, t.TempDir(), append(tc.args, "--no-python", "true")...)
			_, code := d.wait(t)
			lines := strings.Split(strings.TrimSpace(d.stderr.String()), "\n")
			ok := code == 2 && len(lines) == len(tc.want)
			for i := 0; ok && i < len(lines); i++ {
				ok = strings.HasPrefix(lines[i], "mpspawn: error: "+tc.want[i])
			}
			if !ok {
				t.Errorf("driver exited %d, stderr %q; want exit 2 and one line per host, each \"mpspawn: error: \" then %q", code, d.stderr.String(), tc.want)
			}
			if took := d.ended.Sub(d.started); took > 15*time.Second {
				t.Errorf("the error took %v; want it within the ssh timeout", took)
			}
		})
	}
}

// TestSSHShip: --ship runs the job on hosts whose PATH has no mpspawn,
// and removes the copy after.
func TestSSHShip(t *testing.T) {
	c := startSSHD(t, 2)
	before, _ := filepath.Glob("/tmp/mpspawn-ship.*")
	dir := t.TempDir()
	d := c.start(t, dir, "--hosts", "node1:1,node2:1", "--ship", "--no-python", "sh", "-c", `echo world=$WORLD_SIZE rank=$RANK`)
	out, code := d.wait(t)
	if code != 0 || !strings.Contains(out, "[node1:0]: world=2 rank=0") || !strings.Contains(out, "[node2:1]: world=2 rank=1") {
		t.Errorf("driver exited %d, stdout %q; want 0 and both ranks, prefixed by host; stderr:\n%s", code, out, d.stderr.String())
	}
	if after, _ := filepath.Glob("/tmp/mpspawn-ship.*"); len(after) != len(before) {
		t.Errorf("shipped copies left: %q (before: %q)", after, before)
	}
}

// TestSSHDDP: a 2-host × 2-rank gloo DDP job over ssh gives the
// parameters of the single-node 4-rank job.
func TestSSHDDP(t *testing.T) {
	py, script, dir, want := singleNodeDDP(t)
	c := startSSHD(t, 2)
	d := c.start(t, dir, "--hosts", "node1:2,node2:2", "--remote-mpspawn", c.bin, "--python", py, script, "--out", filepath.Join(dir, "ssh"))
	if _, code := d.wait(t); code != 0 {
		t.Fatalf("driver exited %d:\n%s", code, d.stderr.String())
	}
	got, err := os.ReadFile(filepath.Join(dir, "ssh", "rank0.txt"))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("2 hosts × 2 ranks over ssh gave %q (%v); want the single node's %q", got, err, want)
	}
}

// TestSSHShipKilled: a driver SIGKILLed in the middle of --ship's copy
// leaves no copy on the host: the session that holds it ends with the
// driver, and the host removes the directory.
func TestSSHShipKilled(t *testing.T) {
	c := startSSHD(t, 1)
	dir := t.TempDir()
	mark, hold := filepath.Join(dir, "copying"), filepath.Join(dir, "hold")
	if err := syscall.Mkfifo(hold, 0o600); err != nil {
		t.Fatal(err)
	}
	// ssh, but the copy of --ship stops after 64 KiB until the test opens
	// the fifo: the driver is killed while the copy is under way.
	wrapper := filepath.Join(dir, "ssh-wrapper")
	script := fmt.Sprintf("#!/bin/sh\ncase \"$*\" in\n*mpspawn-ship*) { head -c 65536; touch %s; cat %s > /dev/null; cat; } | ssh \"$@\" ;;\n*) exec ssh \"$@\" ;;\nesac\n", mark, hold)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	before, _ := filepath.Glob("/tmp/mpspawn-ship.*")
	d := c.start(t, dir, "--ssh", wrapper+" -F "+c.config, "--hosts", "node1:1", "--ship", "--no-python", "true")
	var made []string
	deadline := time.Now().Add(20 * time.Second)
	for len(made) == 0 && time.Now().Before(deadline) {
		after, _ := filepath.Glob("/tmp/mpspawn-ship.*")
		made = newPaths(before, after)
		if _, err := os.Stat(mark); err != nil || len(made) == 0 {
			made = nil
			time.Sleep(20 * time.Millisecond) // polling, bounded by the deadline
		}
	}
	if len(made) == 0 {
		t.Fatalf("no copy under way on the host within 20s; stderr:\n%s", d.stderr.String())
	}
	_ = d.cmd.Process.Kill()
	_, _ = d.wait(t)
	f, err := os.OpenFile(hold, os.O_WRONLY, 0) // lets the wrapper go on: its stdin, the driver's pipe, has ended
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	deadline = time.Now().Add(10 * time.Second)
	for len(made) > 0 && time.Now().Before(deadline) {
		after, _ := filepath.Glob("/tmp/mpspawn-ship.*")
		if made = newPaths(before, after); len(made) > 0 {
			time.Sleep(20 * time.Millisecond) // polling, bounded by the deadline
		}
	}
	if len(made) > 0 {
		t.Errorf("the copy stays on the host 10s after the driver was SIGKILLed in the middle of it: %q", made)
	}
}

// newPaths are the paths of after not in before.
func newPaths(before, after []string) []string {
	var out []string
	for _, p := range after {
		if !slices.Contains(before, p) {
			out = append(out, p)
		}
	}
	return out
}

// TestSSHLogDir: --log-dir with a host list gathers every host's files on
// the driver, in --log-dir/<run-id>/<host>/, and leaves none on the hosts;
// a host whose copy fails is one warning line saying where its files are.
func TestSSHLogDir(t *testing.T) {
	c := startSSHD(t, 2)
	rank := `echo out-of-rank-$RANK; echo err-of-rank-$RANK >&2`
	t.Run("gathered", func(t *testing.T) {
		dir := t.TempDir()
		before, _ := filepath.Glob("/tmp/mpspawn-logs.*")
		d := c.start(t, dir, "--hosts", "node1:1,node2:1", "--remote-mpspawn", c.bin, "--rdzv-id", "logs1", "--log-dir", "logs", "--redirects", "3", "--no-python", "sh", "-c", rank)
		_, code := d.wait(t)
		if code != 0 || strings.Contains(d.stderr.String(), "warning") {
			t.Errorf("driver exited %d; want 0 and no warning; stderr:\n%s", code, d.stderr.String())
		}
		for host, r := range map[string]string{"node1": "0", "node2": "1"} { // local rank 0 on both hosts
			for file, want := range map[string]string{"stdout.log": "out-of-rank-" + r + "\n", "stderr.log": "err-of-rank-" + r + "\n"} {
				p := filepath.Join(dir, "logs", "logs1", host, "attempt_0", "0", file)
				if got, err := os.ReadFile(p); err != nil || string(got) != want {
					t.Errorf("%s: %q, %v; want %q", p, got, err, want)
				}
			}
		}
		if after, _ := filepath.Glob("/tmp/mpspawn-logs.*"); len(newPaths(before, after)) > 0 {
			t.Errorf("log directories left on the hosts: %q", newPaths(before, after))
		}
	})
	t.Run("not copied", func(t *testing.T) {
		dir := t.TempDir()
		// ssh, but every copy of the logs fails.
		wrapper := filepath.Join(dir, "ssh-wrapper")
		if err := os.WriteFile(wrapper, []byte("#!/bin/sh\ncase \"$*\" in\n*'tar -cf'*) echo 'copy refused' >&2; exit 255 ;;\nesac\nexec ssh \"$@\"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		before, _ := filepath.Glob("/tmp/mpspawn-logs.*")
		d := c.start(t, dir, "--ssh", wrapper+" -F "+c.config, "--hosts", "node1:1,node2:1", "--remote-mpspawn", c.bin, "--rdzv-id", "logs2", "--log-dir", "logs", "--redirects", "3", "--no-python", "sh", "-c", rank)
		_, code := d.wait(t)
		after, _ := filepath.Glob("/tmp/mpspawn-logs.*")
		left := newPaths(before, after)
		for _, p := range left {
			defer os.RemoveAll(p)
		}
		var warnings []string
		for _, line := range strings.Split(d.stderr.String(), "\n") {
			if strings.HasPrefix(line, "mpspawn: warning: ") {
				warnings = append(warnings, line)
			}
		}
		if code != 0 || len(warnings) != 2 || len(left) != 2 {
			t.Fatalf("driver exited %d with %d warnings, %d directories left on the hosts; want 0, and one warning per host, each host's files kept; stderr:\n%s", code, len(warnings), len(left), d.stderr.String())
		}
		slices.Sort(warnings) // the hosts' copies end in any order
		for i, host := range []string{"node1", "node2"} {
			w := warnings[i]
			prefix := "mpspawn: warning: host " + host + ": its log files were not copied here (ssh failed: copy refused): they are at " + host + ":"
			where, ok := strings.CutPrefix(w, prefix)
			if !ok {
				t.Errorf("warning %q; want it to start %q", w, prefix)
				continue
			}
			if b, err := os.ReadFile(filepath.Join(where, "attempt_0", "0", "stdout.log")); err != nil || !strings.HasPrefix(string(b), "out-of-rank-") {
				t.Errorf("%s: the files the warning names: %q, %v", where, b, err)
			}
		}
	})
}

// TestSSHHostfileOrder: node ranks follow the hostfile's order, not the
// hosts' addresses: node2 (127.0.0.3), listed first, is node 0 with ranks
// 0 and 1; node1 (127.0.0.2) node 1 with ranks 2 and 3.
func TestSSHHostfileOrder(t *testing.T) {
	c := startSSHD(t, 2)
	dir := t.TempDir()
	hostfile := filepath.Join(dir, "hostfile")
	if err := os.WriteFile(hostfile, []byte("# listed against address order\nnode2 slots=2\nnode1 slots=2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := c.start(t, dir, "--hostfile", hostfile, "--remote-mpspawn", c.bin, "--no-python", "sh", "-c", `echo rank=$RANK group=$GROUP_RANK`)
	out, code := d.wait(t)
	var want []string
	for r, host := range []string{"node2", "node2", "node1", "node1"} {
		want = append(want, fmt.Sprintf("[%s:%d]: rank=%d group=%d", host, r, r, r/2))
	}
	slices.Sort(want)
	var got []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "rank=") {
			got = append(got, line)
		}
	}
	slices.Sort(got) // the hosts' lines come in any order
	if code != 0 || !slices.Equal(got, want) {
		t.Errorf("driver exited %d, rank lines %q; want 0 and %q; stderr:\n%s", code, got, want, d.stderr.String())
	}
}
