package slurmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"golang.org/x/sys/unix"
)

// Cluster is a two-node Slurm cluster on this host: munged (as user
// munge), slurmctld, and two slurmd (-N n1, -N n2) on 127.0.0.1 with a port
// each, every file under one temporary directory. Nodes are allocated
// whole (OverSubscribe=EXCLUSIVE), so a step gets SLURM_CPUS_ON_NODE=2.
// Each node has GPUs fake GPUs for --gres=gpu:N (character devices made
// with mknod, listed in gres.conf), or none where mknod is not allowed.
// Start it with Start; the test's cleanup stops every daemon by pid and
// removes the directory.
type Cluster struct {
	Dir   string // the cluster's directory
	Conf  string // its slurm.conf, for SLURM_CONF
	Nodes []string
	GPUs  int // fake GPUs per node: 4, or 0 when mknod failed (GPUsErr)

	GPUsErr error

	daemons []*daemon
}

type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd.Wait returns
}

// startTimeout bounds how long the cluster may take to come up; it takes
// about a tenth of a second.
const startTimeout = 60 * time.Second

var confTemplate = template.Must(template.New("slurm.conf").Parse(`# A two-node test cluster on one host (internal/slurmtest).
ClusterName=mpspawntest
SlurmctldHost={{.Host}}(127.0.0.1)
SlurmctldPort={{.CtldPort}}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={{.Dir}}/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation={{.Dir}}/state
SlurmdSpoolDir={{.Dir}}/spool/%n
SlurmctldPidFile={{.Dir}}/slurmctld.pid
SlurmdPidFile={{.Dir}}/slurmd-%n.pid
SlurmctldLogFile={{.Dir}}/slurmctld.log
SlurmdLogFile={{.Dir}}/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=30
{{if .GPUs}}GresTypes=gpu
{{end}}{{range $i, $n := .Nodes}}NodeName={{$n}} NodeHostname={{$.Host}} NodeAddr=127.0.0.1 Port={{index $.NodePorts $i}} CPUs=2{{if $.GPUs}} Gres=gpu:{{$.GPUs}}{{end}} State=UNKNOWN
{{end}}PartitionName=test Nodes={{.NodeList}} Default=YES MaxTime=INFINITE State=UP OverSubscribe=EXCLUSIVE
`))

// Start brings the cluster up, or skips t (fails it under CI=true) when
// Slurm or munge is not installed or the test does not run as root (slurmd
// must). It returns once both nodes are idle.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bins := Require(t, "munged", "slurmctld", "slurmd", "srun", "sinfo", "scontrol")
	munged, slurmctld, slurmd := bins[0], bins[1], bins[2]
	if os.Geteuid() != 0 {
		Missing(t, "the SLURM cluster tests run slurmd, which needs root")
	}
	mu, err := user.Lookup("munge")
	if err != nil {
		Missing(t, fmt.Sprintf("no munge user (%v)", err))
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "slurmtest-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Dir: dir, Conf: filepath.Join(dir, "slurm.conf"), Nodes: []string{"n1", "n2"}}
	t.Cleanup(func() { c.stop(t) })
	// munged (user munge) reaches its socket through this directory.
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 1+len(c.Nodes))
	c.fakeGPUs(t)
	var conf bytes.Buffer
	if err := confTemplate.Execute(&conf, map[string]any{
		"Host": host, "Dir": dir, "CtldPort": ports[0], "Nodes": c.Nodes, "NodePorts": ports[1:],
		"NodeList": strings.Join(c.Nodes, ","), "GPUs": c.GPUs,
	}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"state", "spool"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(c.Conf, conf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	c.startMunge(t, munged, mu)
	c.start(t, "slurmctld", slurmctld, "-D", "-c")
	for _, n := range c.Nodes {
		c.start(t, "slurmd "+n, slurmd, "-D", "-N", n)
	}
	c.waitIdle(t)
	return c
}

// fakeGPUs makes 4 character devices under dev/ and lists them in
// gres.conf as each node's GPUs (both nodes share them: they are one host).
// Where mknod is not allowed the cluster has no GPUs, and GPUsErr says why.
func (c *Cluster) fakeGPUs(t testing.TB) {
	t.Helper()
	dev := filepath.Join(c.Dir, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	const n = 4
	for i := range n {
		// Distinct numbers, as real GPUs have (1,3 is /dev/null's).
		if err := syscall.Mknod(filepath.Join(dev, fmt.Sprintf("gpu%d", i)), syscall.S_IFCHR|0o666, int(unix.Mkdev(1, uint32(3+i)))); err != nil {
			c.GPUsErr = fmt.Errorf("mknod: %w", err)
			return
		}
	}
	gres := fmt.Sprintf("NodeName=%s Name=gpu File=%s/gpu[0-%d]\n", strings.Join(c.Nodes, ","), dev, n-1)
	if err := os.WriteFile(filepath.Join(c.Dir, "gres.conf"), []byte(gres), 0o644); err != nil {
		t.Fatal(err)
	}
	c.GPUs = n
}

// Env is the environment Slurm's commands need to find this cluster: the
// process's own with SLURM_CONF set.
func (c *Cluster) Env() []string { return append(os.Environ(), "SLURM_CONF="+c.Conf) }

// startMunge makes a key and starts munged as user munge, with its key,
// socket, pid, log and seed files under the cluster's directory.
func (c *Cluster) startMunge(t testing.TB, munged string, mu *user.User) {
	t.Helper()
	uid, _ := strconv.Atoi(mu.Uid)
	gid, _ := strconv.Atoi(mu.Gid)
	md := filepath.Join(c.Dir, "munge")
	if err := os.Mkdir(md, 0o711); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 128) // mungekey's default size
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(md, "munge.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{md, filepath.Join(md, "munge.key")} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	c.start(t, "munged", munged, "--foreground",
		"--key-file="+filepath.Join(md, "munge.key"), "--socket="+filepath.Join(md, "munge.socket"),
		"--pid-file="+filepath.Join(md, "munged.pid"), "--log-file="+filepath.Join(md, "munged.log"),
		"--seed-file="+filepath.Join(md, "munged.seed"))
}

// start starts a daemon in the foreground, as user munge for munged.
func (c *Cluster) start(t testing.TB, name, path string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = c.Env()
	cmd.Dir = c.Dir
	out, err := os.Create(filepath.Join(c.Dir, strings.ReplaceAll(name, " ", "-")+".out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group: a test's Ctrl-C is not the daemons'.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if name == "munged" {
		mu, _ := user.Lookup("munge")
		uid, _ := strconv.Atoi(mu.Uid)
		gid, _ := strconv.Atoi(mu.Gid)
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	d := &daemon{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(d.done)
	}()
	c.daemons = append(c.daemons, d)
	if name == "munged" {
		c.waitFor(t, d, "munged's socket", func() error {
			_, err := os.Stat(filepath.Join(c.Dir, "munge", "munge.socket"))
			return err
		})
	}
	return d
}

// waitIdle waits until every node is idle.
func (c *Cluster) waitIdle(t testing.TB) {
	t.Helper()
	c.waitFor(t, nil, "both nodes idle", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sinfo", "--noheader", "--Node", "--format=%N %t")
		cmd.Env = c.Env()
		out, err := cmd.Output()
		if err != nil {
			return err
		}
		if idle := strings.Count(string(out), " idle"); idle != len(c.Nodes) {
			return fmt.Errorf("sinfo: %s", strings.TrimSpace(string(out)))
		}
		return nil
	})
}

// waitFor polls ready (Slurm tells no one when it is ready) until it
// returns nil, for at most startTimeout; it fails t with the daemons' logs
// when the time is up or when the daemon d exits first.
func (c *Cluster) waitFor(t testing.TB, d *daemon, what string, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ready()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slurmtest: no %s after %v (%v)\n%s", what, startTimeout, err, c.logs())
		}
		var exited <-chan struct{}
		if d != nil {
			exited = d.done
		}
		select {
		case <-tick.C:
		case <-exited:
			t.Fatalf("slurmtest: %s exited before %s\n%s", d.name, what, c.logs())
		}
	}
}

// stop ends every daemon by pid, slurmd first: SIGTERM, then SIGKILL after
// a bound. The directory goes too, unless the test failed: then the logs
// are shown.
func (c *Cluster) stop(t testing.TB) {
	for i := len(c.daemons) - 1; i >= 0; i-- {
		d := c.daemons[i]
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			_ = d.cmd.Process.Kill()
			select {
			case <-d.done:
			case <-time.After(10 * time.Second):
				t.Errorf("slurmtest: %s (pid %d) did not exit after SIGKILL", d.name, d.cmd.Process.Pid)
			}
		}
	}
	if t.Failed() {
		t.Logf("slurmtest: cluster logs\n%s", c.logs())
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		t.Errorf("slurmtest: %v", err)
	}
}

// logs is the tail of every daemon's log, for a failure message.
func (c *Cluster) logs() string {
	var b strings.Builder
	files, _ := filepath.Glob(filepath.Join(c.Dir, "*.log"))
	outs, _ := filepath.Glob(filepath.Join(c.Dir, "*.out"))
	for _, f := range append(files, outs...) {
		data, err := os.ReadFile(f)
		if err != nil || len(data) == 0 {
			continue
		}
		if len(data) > 3000 {
			data = data[len(data)-3000:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s\n", filepath.Base(f), data)
	}
	return b.String()
}

// freePorts returns n ports that were free on 127.0.0.1 a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}
