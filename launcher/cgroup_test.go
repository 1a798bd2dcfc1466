//go:build linux

package launcher

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/mpspawn/mpspawn/internal/pidfd"
	"github.com/mpspawn/mpspawn/internal/testrank"
	"golang.org/x/sys/unix"
)

// needCgroups skips the test where this process cannot make cgroups.
func needCgroups(t *testing.T) string {
	t.Helper()
	base, err := cgroupBase()
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
		(&jobCgroup{dir: dirs[i]}).waitEmpty(5 * time.Second)
		_ = unix.Rmdir(dirs[i])
	}
}

// TestCgroupRemoveAfterALateEntry: a process that entered a rank's cgroup
// after the job's last kill (a forkserver's child placed at that moment),
// and a cgroup a rank made under its own, do not keep the job's cgroups
// from being removed: remove kills again, waits, and removes them all.
func TestCgroupRemoveAfterALateEntry(t *testing.T) {
	base := needCgroups(t)
	c, err := newJobCgroup(3)
	if err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Base(c.dir)
	t.Cleanup(func() { removeLeft(cgroupsLeft(base, prefix)) })
	late := startIdle(t)
	if err := enter(c.ranks[1], late.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(c.ranks[2], "own"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := c.remove(5 * time.Second); err != nil {
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
// removes every cgroup all the same. The test stops the guard (SIGSTOP)
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
