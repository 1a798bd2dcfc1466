//go:build linux

package launcher

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/procfs"
	"github.com/mpspawn/mpspawn/internal/testrank"
	"golang.org/x/sys/unix"
)

// helperLauncher is a launcher process for TestLauncherSIGKILLLeavesNothing:
// it starts n "family" ranks and reports every rank's and child's pid on
// ready, in one line, then supervises until killed. $MPSPAWN_TEST_MODE
// names another mode, $MPSPAWN_TEST_CONTAIN the containment;
// $MPSPAWN_TEST_PYTHON and $MPSPAWN_TEST_SCRIPT fork the ranks from a
// forkserver, which preloads the modules in $MPSPAWN_TEST_PRELOAD
// (comma-separated).
func helperLauncher(ready string, n int) int {
	if empty := os.Getenv("MPSPAWN_TEST_NO_SHELL"); empty != "" {
		if err := hideShell(empty); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var specs []Spec
	for i := range n {
		mode := os.Getenv("MPSPAWN_TEST_MODE")
		if mode == "" {
			mode = "family"
		}
		s := helperSpec(i, mode, testrank.ReadyFD)
		if python := os.Getenv("MPSPAWN_TEST_PYTHON"); python != "" {
			s = pySpec(i, python, os.Getenv("MPSPAWN_TEST_SCRIPT"), mode)
		}
		s.ExtraFiles = []*os.File{w}
		specs = append(specs, s)
	}
	opts := Options{Containment: Containment(os.Getenv("MPSPAWN_TEST_CONTAIN"))}
	if python := os.Getenv("MPSPAWN_TEST_PYTHON"); python != "" {
		var preload []string
		if p := os.Getenv("MPSPAWN_TEST_PRELOAD"); p != "" {
			preload = strings.Split(p, ",")
		}
		fs, err := newForkserver(ForkserverConfig{Python: python, Preload: preload})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer fs.Close()
		opts.Method = fs
	}
	g, err := Start(context.Background(), specs, opts)
	w.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var pids []string
	sc := bufio.NewScanner(r)
	for range specs {
		if !sc.Scan() {
			return 1
		}
		pids = append(pids, sc.Text())
	}
	testrank.WriteReady(ready, strings.Join(pids, " "))
	g.Wait()
	return 0
}

// hideShell makes /bin/sh and /usr/bin/sh unusable in this process's
// mount namespace (a private one: see TestLauncherSIGKILLLeavesNothingWithoutShell)
// by binding the empty, non-executable file empty over them, and checks
// that no shell runs any more.
func hideShell(empty string) error {
	for _, sh := range []string{"/bin/sh", "/usr/bin/sh"} {
		if err := unix.Mount(empty, sh, "", unix.MS_BIND, ""); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("hide %s: %w", sh, err)
		}
	}
	for _, sh := range []string{"/bin/sh", "/usr/bin/sh"} {
		if err := exec.Command(sh, "-c", "exit 0").Run(); err == nil {
			return fmt.Errorf("%s still runs after it was hidden", sh)
		}
	}
	return nil
}

// helperLauncherEarly starts n family ranks that write their readiness
// straight to this process's fd 3, so that the test sees the first rank and
// its child up while the others are still starting.
//
// With python and script (the forkserver tests' rank script), the ranks are
// forked from a forkserver.
func helperLauncherEarly(n int, pyScript ...string) int {
	ready := os.NewFile(3, "ready")
	var opts Options
	var specs []Spec
	for i := range n {
		s := helperSpec(i, "family", testrank.ReadyFD)
		if len(pyScript) == 2 {
			s = pySpec(i, pyScript[0], pyScript[1], "family")
		}
		s.ExtraFiles = []*os.File{ready}
		specs = append(specs, s)
	}
	if len(pyScript) == 2 {
		fs, err := newForkserver(ForkserverConfig{Python: pyScript[0]})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer fs.Close()
		opts.Method = fs
	}
	g, err := Start(context.Background(), specs, opts)
	ready.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	g.Wait()
	return 0
}

// startLauncher starts a helper launcher process ("launcher READY N", with
// env added) and returns it with the pids its ranks reported: want of
// them, or the test fails (and the launcher is killed).
func startLauncher(t *testing.T, n, want int, env ...string) (*exec.Cmd, []int) {
	t.Helper()
	return startLauncherIn(t, nil, n, want, env...)
}

// startLauncherIn is startLauncher with the launcher process started with
// attr (nil for none).
func startLauncherIn(t *testing.T, attr *syscall.SysProcAttr, n, want int, env ...string) (*exec.Cmd, []int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := testrank.Command("launcher", testrank.ReadyFD, strconv.Itoa(n))
	cmd.Env = append(os.Environ(), env...)
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n') // short if the launcher died
	var pids []int
	for _, f := range strings.Fields(line) {
		pid, _ := strconv.Atoi(f)
		pids = append(pids, pid)
	}
	if len(pids) != want {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("launcher reported pids %v; want %d", pids, want)
	}
	return cmd, pids
}

func TestLauncherSIGKILLLeavesNothing(t *testing.T) {
	cmd, pids := startLauncher(t, 3, 6) // 3 ranks and their children
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, pid := range pids {
		if !pidGone(pid, time.Second) {
			t.Errorf("pid %d still alive 1s after the launcher was SIGKILLed", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// TestLauncherSIGKILLLeavesNothingWithoutShell: the guard needs no shell.
// The launcher runs in a mount namespace of its own (private: nothing it
// mounts is seen outside it) where /bin/sh and /usr/bin/sh are an empty
// file that cannot be executed; SIGKILLed, it leaves none of its ranks or
// their children, with cgroups (where they can be made) and with process
// groups alone.
func TestLauncherSIGKILLLeavesNothingWithoutShell(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mount namespaces need root here")
	}
	empty := filepath.Join(t.TempDir(), "no-shell")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cont := range containments(t) {
		t.Run(string(cont), func(t *testing.T) {
			cmd, pids := startLauncherIn(t, &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}, 3, 6,
				"MPSPAWN_TEST_NO_SHELL="+empty, "MPSPAWN_TEST_CONTAIN="+string(cont))
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			for _, pid := range pids {
				if !pidGone(pid, time.Second) {
					t.Errorf("pid %d still alive 1s after the launcher (without /bin/sh) was SIGKILLed", pid)
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		})
	}
}

// TestLauncherSIGKILLDuringStartLeavesNothing: a launcher SIGKILLed while
// it starts 64 ranks, each of which starts a child, leaves none of them
// behind: each rank is registered with the guard the moment it exists,
// not once every rank has started.
func TestLauncherSIGKILLDuringStartLeavesNothing(t *testing.T) {
	_, python, script := startForkserver(t) // for its rank script; each launcher starts its own server
	for run := range 6 {
		method, args := MethodSpawn, []string{"launcher-early", "64"}
		if run%2 == 1 {
			method, args = MethodForkserver, append(args, python, script)
		}
		tag := fmt.Sprintf("MPSPAWN_ORPHAN_TEST=%d-%d", os.Getpid(), run)
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd := testrank.Command(args...)
		cmd.Env = append(os.Environ(), tag)
		cmd.ExtraFiles = []*os.File{w}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		// The first rank and its child are up; most ranks are still
		// starting: kill now, or up to 20 ms later.
		_, _ = bufio.NewReader(r).ReadString('\n')
		time.Sleep(time.Duration(rand.IntN(21)) * time.Millisecond) // when the kill lands, not a wait for anything
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		r.Close()
		for _, pid := range taggedPids(tag) {
			if !pidGone(pid, time.Second) {
				t.Errorf("run %d (%s): pid %d (a rank or its child) alive 1s after its launcher was SIGKILLed", run, method, pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// taggedPids lists the processes whose environment holds tag.
func taggedPids(tag string) []int {
	var pids []int
	for _, pid := range procfs.Pids() {
		if procfs.HasEnv(pid, tag) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestGuardKilledIsReplaced: a guard that dies (a rank killed it) is
// replaced at once, told every group still registered, so a launcher
// SIGKILLed afterwards still takes its ranks' children along.
func TestGuardKilledIsReplaced(t *testing.T) {
	for _, method := range []string{MethodSpawn, MethodForkserver} {
		t.Run(method, func(t *testing.T) { guardKilledIsReplaced(t, method) })
	}
}

func guardKilledIsReplaced(t *testing.T, method string) {
	env := []string{"MPSPAWN_TEST_CONTAIN=process-group"} // the guard's process groups alone
	if method == MethodForkserver {
		_, python, script := startForkserver(t) // for its rank script; the launcher starts its own server
		env = append(env, "MPSPAWN_TEST_PYTHON="+python, "MPSPAWN_TEST_SCRIPT="+script)
	}
	cmd, pids := startLauncher(t, 2, 4, env...) // 2 ranks and their children
	old := guardOf(cmd.Process.Pid)
	if old == 0 {
		t.Fatal("the launcher has no guard")
	}
	_ = syscall.Kill(old, syscall.SIGKILL)
	// The launcher notices at once and starts another; nothing tells the
	// test when, so look for a while.
	var repl int
	for deadline := time.Now().Add(10 * time.Second); repl == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if g := guardOf(cmd.Process.Pid); g != 0 && g != old {
			repl = g
		}
	}
	if repl == 0 {
		t.Error("no new guard 10s after the guard was killed")
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	for _, pid := range pids {
		if !pidGone(pid, time.Second) {
			t.Errorf("pid %d still alive 1s after the launcher was SIGKILLed (its first guard killed)", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// guardOf is the pid of launcher's living guard process, or 0.
func guardOf(launcher int) int {
	for _, pid := range procfs.Children(launcher) {
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if bytes.HasPrefix(cmdline, []byte("mpspawn-guard\x00")) {
			return pid
		}
	}
	return 0
}

// TestGuardKillsTheRankItself: a rank that left its process group and
// cleared its parent-death signal is still killed when its launcher is
// SIGKILLed: the guard signals the rank's pid as well as its group.
func TestGuardKillsTheRankItself(t *testing.T) {
	cmd, pids := startLauncher(t, 1, 2, "MPSPAWN_TEST_CONTAIN=process-group", "MPSPAWN_TEST_MODE=escape")
	rank, child := pids[0], pids[1]
	defer syscall.Kill(child, syscall.SIGKILL) // a daemon in a group of its own: without cgroups, it survives, as documented
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if !pidGone(rank, time.Second) {
		t.Errorf("rank pid %d (left its group, no parent-death signal) alive 1s after its launcher was SIGKILLed", rank)
		_ = syscall.Kill(rank, syscall.SIGKILL)
	}
}
