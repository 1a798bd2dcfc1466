//go:build linux

package launcher

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/mpspawn/mpspawn/internal/pidfd"
	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/launcher/internal/contain"
	"golang.org/x/sys/unix"
)

// needCgroups skips the test where this process cannot make cgroups.
func needCgroups(t *testing.T) string {
	t.Helper()
	base, err := contain.Base()
	if err != nil {
		t.Skipf("no cgroups here (%v)", err)
	}
	return base
}

// startIdle starts a process of the test's own that waits for a signal,
// killed and reaped when the test ends.
func startIdle(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := testrank.Command("block", os.DevNull)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// enter moves process pid into cgroup dir, as a forkserver places its
// child.
func enter(dir string, pid int) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
}

// cgroupsLeft lists the cgroups under base whose names start with
// prefix, and the cgroups under them.
func cgroupsLeft(base, prefix string) []string {
	var left []string
	tops, _ := filepath.Glob(filepath.Join(base, prefix) + "*")
	for _, top := range tops {
		_ = filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				left = append(left, path)
			}
			return nil
		})
	}
	return left
}

// removeLeft kills and removes cgroups a failed test left behind.
func removeLeft(dirs []string) {
	for _, dir := range dirs {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	}
	for i := len(dirs) - 1; i >= 0; i-- { // children after their parent in WalkDir's order
		(&contain.Job{Dir: dirs[i]}).WaitEmpty(5 * time.Second)
		_ = unix.Rmdir(dirs[i])
	}
}

// TestCgroupRemoveAfterALateEntry: a process that entered a rank's cgroup
// after the job's last kill (a forkserver's child placed at that moment),
// and a cgroup a rank made under its own, do not keep the job's cgroups
// from being removed: remove kills again, waits, and removes them all.
func TestCgroupRemoveAfterALateEntry(t *testing.T) {
	base := needCgroups(t)
	c, err := contain.NewJob(3)
	if err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Base(c.Dir)
	t.Cleanup(func() { removeLeft(cgroupsLeft(base, prefix)) })
	late := startIdle(t)
	if err := enter(c.Ranks[1], late.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(c.Ranks[2], "own"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(5 * time.Second); err != nil {
		t.Errorf("remove: %v; want nil", err)
	}
	if left := cgroupsLeft(base, prefix); len(left) > 0 {
		t.Errorf("cgroups left after remove: %q; want none", left)
	}
	if !pidGone(late.Process.Pid, 5*time.Second) {
		t.Errorf("the process that entered rank 1's cgroup late is alive after remove; want killed")
	}
}

// TestGuardRemovesACgroupEnteredLate: a launcher SIGKILLed; its guard
// kills the job's cgroups and waits for them to empty; a process enters a
// rank's cgroup between that wait and the guard's rmdir (the window in
// which a forkserver's child could land in it): the guard kills it and
// removes every cgroup all the same, a cgroup a rank made under its own
// included. The test stops the guard (SIGSTOP)
// the moment it opens the job's cgroup to remove what is in it, as an
// inotify watch reports, moves a process of its own into rank 1's cgroup,
// and lets the guard go on.
func TestGuardRemovesACgroupEnteredLate(t *testing.T) {
	base := needCgroups(t)
	for try := 1; ; try++ {
		entered := guardAfterALateEntry(t, base)
		if entered || t.Failed() {
			t.Logf("run %d: a process entered rank 1's cgroup while the guard was stopped: %v", try, entered)
			return
		}
		// The guard's rmdir got there first: a run that tested nothing.
		if try == 5 {
			t.Fatalf("in %d runs the guard was never stopped before its rmdir", try)
		}
	}
}

// guardAfterALateEntry runs the scenario of TestGuardRemovesACgroupEnteredLate once
// and reports whether the late entry happened.
func guardAfterALateEntry(t *testing.T, base string) (entered bool) {
	cmd, _ := startLauncher(t, 2, 4, "MPSPAWN_TEST_CONTAIN=cgroup")
	prefix := fmt.Sprintf("mpspawn-%d-", cmd.Process.Pid)
	job := filepath.Join(base, prefix+"1")
	defer func() { removeLeft(cgroupsLeft(base, prefix)) }()
	guard := guardOf(cmd.Process.Pid)
	gfd, err := unix.PidfdOpen(guard, 0)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("the launcher's guard: %v", err)
	}
	defer unix.Close(gfd)
	defer syscall.Kill(-guard, syscall.SIGCONT) // whatever happens, the guard does not stay stopped
	late := startIdle(t)
	if err := os.Mkdir(filepath.Join(job, "rank-0", "own"), 0o755); err != nil { // a rank's cgroup of its own
		t.Fatal(err)
	}
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, job, unix.IN_OPEN); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	// The first open of the job's directory itself (not of a file in it)
	// is the guard's, to remove the cgroups in it.
	if !awaitDirOpen(t, in, 10*time.Second) {
		t.Fatalf("the guard did not open %s within 10s of its launcher's death", job)
	}
	if err := syscall.Kill(-guard, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	entered = enter(filepath.Join(job, "rank-1"), late.Process.Pid) == nil
	_ = syscall.Kill(-guard, syscall.SIGCONT)
	if !pidfd.Wait(gfd, 30*time.Second) {
		t.Fatalf("guard %d still running 30s after its launcher's death", guard)
	}
	if left := cgroupsLeft(base, prefix); len(left) > 0 {
		t.Errorf("cgroups left after the guard's end: %q; want none", left)
	}
	if entered && !pidGone(late.Process.Pid, time.Second) {
		t.Errorf("the process that entered rank 1's cgroup late is alive after the guard's end; want killed")
	}
	return entered
}

// awaitDirOpen reads inotify instance in until a watched directory itself
// is opened, for at most d.
func awaitDirOpen(t *testing.T, in int, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	buf := make([]byte, 64<<10)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		fds := []unix.PollFd{{Fd: int32(in), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil || n == 0 {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return false
		}
		n, err := unix.Read(in, buf)
		if err != nil {
			t.Fatalf("inotify: %v", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			if ev.Mask&unix.IN_OPEN != 0 && ev.Mask&unix.IN_ISDIR != 0 && len(bytes.TrimRight(name, "\x00")) == 0 {
				return true
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// holdModule is a module a forkserver preloads in the tests that hold a
// forked child, or the server itself, at the moment of a fork. At-fork
// hooks run first of all in a new child ("child"), and in the server
// right after the fork ("server", only with $MPSPAWN_TEST_HOLD_SERVER
// set): each connects to the socket at $MPSPAWN_TEST_HOLD, sends "WHO
// PID", and waits until the test closes the connection or refuses it. A
// rank's own forks are not held.
const holdModule = `import os, socket
held = False
def hold(who):
    global held
    path = os.environ.get("MPSPAWN_TEST_HOLD")
    if held or not path or (who == "server" and not os.environ.get("MPSPAWN_TEST_HOLD_SERVER")):
        return
    held = who == "child"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendall(b"%s %d\n" % (who.encode(), os.getpid()))
        s.recv(1)
    except OSError:
        pass
    finally:
        s.close()
os.register_at_fork(after_in_parent=lambda: hold("server"), after_in_child=lambda: hold("child"))
`

// holdSetup writes holdModule to a directory and listens on a socket in
// it; the environment given puts both where the forkserver finds them.
func holdSetup(t *testing.T) (ln *net.UnixListener, env []string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mpspawn_hold.py"), []byte(holdModule), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "hold.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, []string{"PYTHONPATH=" + dir, "MPSPAWN_TEST_HOLD=" + sock}
}

// held is a process holdModule holds, and its connection: closing it
// lets the process go on.
type held struct {
	who  string // "child" or "server"
	pid  int
	conn net.Conn
}

// acceptHeld accepts n processes held by holdModule.
func acceptHeld(t *testing.T, ln *net.UnixListener, n int) []held {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	_ = ln.SetDeadline(deadline)
	var hs []held
	for range n {
		c, err := ln.Accept()
		if err != nil {
			t.Fatalf("%d of %d processes held at a fork: %v", len(hs), n, err)
		}
		_ = c.SetReadDeadline(deadline)
		line, err := bufio.NewReader(c).ReadString('\n')
		who, p, _ := strings.Cut(strings.TrimSpace(line), " ")
		pid, perr := strconv.Atoi(p)
		if err != nil || perr != nil {
			c.Close()
			t.Fatalf("a held process sent %q, %v; want WHO PID", line, err)
		}
		hs = append(hs, held{who, pid, c})
	}
	return hs
}

// TestForkserverPlacesItsChildBeforeReplying: when the launcher hears of a
// forked rank, the rank is already in its cgroup, though it has not run
// anything yet (held in an at-fork hook): the server places it, the child
// never places itself. A child placing itself could do so after the
// launcher's, or its guard's, last kill of the job's cgroups, leaving
// them populated at their rmdir (mpspawn-<pid>-1/rank-N left after CI
// runs), or, killed with the launcher before it did, outlive the job.
func TestForkserverPlacesItsChildBeforeReplying(t *testing.T) {
	needCgroups(t)
	ln, env := holdSetup(t)
	fs, python, script := startForkserverWith(t, ForkserverConfig{Preload: []string{"mpspawn_hold"}, Env: append(os.Environ(), env...)})
	g, err := Start(context.Background(), []Spec{pySpec(0, python, script, "exit", "0")}, Options{Method: fs, Containment: ContainCgroup})
	if err != nil {
		t.Fatal(err)
	}
	rank, job := g.cont.cg.Ranks[0], g.cont.cg.Dir
	hs := acceptHeld(t, ln, 1) // the reply has come: Start has returned
	mount, err := contain.Mount()
	if err != nil {
		t.Fatal(err)
	}
	want := "0::" + strings.TrimPrefix(rank, mount)
	got, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", hs[0].pid))
	if !slices.Contains(strings.Split(string(got), "\n"), want) {
		t.Errorf("forked rank %d's cgroups when Start returned:\n%s\nwant the line %q", hs[0].pid, got, want)
	}
	hs[0].conn.Close()
	if res := waitResult(t, g); !res.Succeeded() {
		t.Errorf("rank held, then let go: %s; want it to exit 0", res.Ranks[0].Status())
	}
	if _, err := os.Stat(job); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("job cgroup %s after Wait: %v; want removed", job, err)
	}
}

// TestForkserverHeldWhenTheLauncherDies: a launcher SIGKILLed while its
// forkserver is between a fork and its reply, the child not placed yet,
// leaves neither the child nor a cgroup behind: until the server has
// placed it, the child is in the server's process group, which the guard
// kills.
func TestForkserverHeldWhenTheLauncherDies(t *testing.T) {
	base := needCgroups(t)
	_, python, script := startForkserver(t) // for its rank script; the launcher starts its own server
	ln, env := holdSetup(t)
	cmd := testrank.Command("launcher", os.DevNull, "1")
	cmd.Env = append(append(os.Environ(), env...), "MPSPAWN_TEST_HOLD_SERVER=1", "MPSPAWN_TEST_CONTAIN=cgroup",
		"MPSPAWN_TEST_PYTHON="+python, "MPSPAWN_TEST_SCRIPT="+script, "MPSPAWN_TEST_PRELOAD=mpspawn_hold")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("mpspawn-%d-", cmd.Process.Pid)
	defer func() { removeLeft(cgroupsLeft(base, prefix)) }()
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	hs := acceptHeld(t, ln, 2) // the server after its fork, and its child
	defer func() {
		for _, h := range hs {
			h.conn.Close()
			if h.who == "child" {
				_ = syscall.Kill(h.pid, syscall.SIGKILL) // after a failure: a child that outlived the job
			}
		}
	}()
	guard := guardOf(cmd.Process.Pid)
	gfd, err := unix.PidfdOpen(guard, 0)
	if err != nil {
		t.Fatalf("the launcher's guard: %v", err)
	}
	defer unix.Close(gfd)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	for _, h := range hs {
		if !pidGone(h.pid, time.Second) {
			t.Errorf("%s %d, held at a fork, alive 1s after its launcher was SIGKILLed", h.who, h.pid)
		}
	}
	ln.Close()
	if !pidfd.Wait(gfd, 30*time.Second) {
		t.Fatalf("guard %d still running 30s after its launcher's death", guard)
	}
	if left := cgroupsLeft(base, prefix); len(left) > 0 {
		t.Errorf("cgroups left after the guard's end: %q; want none", left)
	}
}
