//go:build linux

package launcher

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/mpspawn/mpspawn/internal/testrank"
)

// rankSpec is a rank of the given start method running mode: the helper
// rank for spawn, the Python rank script for a forkserver (started for the
// test). Its first extra file is for readiness.
func rankSpec(t *testing.T, method string, mode string) (Spec, Options) {
	t.Helper()
	if method == MethodSpawn {
		return helperSpec(0, mode, testrank.ReadyFD), Options{}
	}
	fs, python, script := startForkserver(t)
	return pySpec(0, python, script, mode), Options{Method: fs}
}

// TestRankLeavingItsGroupIsStopped: a rank that moved into another
// process group still gets the stop signal, sent to its own pid.
func TestRankLeavingItsGroupIsStopped(t *testing.T) {
	for _, method := range []string{MethodSpawn, MethodForkserver} {
		t.Run(method, func(t *testing.T) {
			spec, opts := rankSpec(t, method, "leave-group")
			opts.Stop.GracePeriod = 30 * time.Second // SIGTERM must do it, not SIGKILL
			specs := []Spec{spec}
			ready := withReady(t, specs)
			g, err := Start(context.Background(), specs, opts)
			if err != nil {
				t.Fatal(err)
			}
			pids := strings.Fields(ready()[0])
			child, _ := strconv.Atoi(pids[1])
			t.Cleanup(func() {
				_ = syscall.Kill(child, syscall.SIGKILL)
				proctest.WaitExit(child, time.Second)
			})
			g.Stop(errors.New("test: stop"))
			res := waitResult(t, g)
			if r := res.Ranks[0]; r.Signal != syscall.SIGTERM || !r.Stopped {
				t.Errorf("rank outside its group ended with %s (stopped %v); want stopped by SIGTERM", r.Status(), r.Stopped)
			}
		})
	}
}

// TestKillWaitBound: a rank whose exit never comes back (here: its
// forkserver is stopped, so it is never reaped; in life, uninterruptible
// sleep during driver teardown) does not hang the launcher: after
// KillWait past SIGKILL it is reported with its state.
func TestKillWaitBound(t *testing.T) {
	spec, opts := rankSpec(t, MethodForkserver, "block")
	fs := opts.Method.(*Forkserver)
	opts.Stop.GracePeriod, opts.Stop.KillWait = 100*time.Millisecond, 300*time.Millisecond
	specs := []Spec{spec}
	ready := withReady(t, specs)
	g, err := Start(context.Background(), specs, opts)
	if err != nil {
		t.Fatal(err)
	}
	ready()
	if err := syscall.Kill(fs.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(fs.Pid(), syscall.SIGCONT)
	g.Stop(errors.New("test: stop"))
	res := waitResult(t, g)
	want := "did not exit 300ms after SIGKILL (state Z)" // dead, but its parent cannot reap it
	if r := res.Ranks[0]; !strings.Contains(r.Note, want) || r.Signal != syscall.SIGKILL {
		t.Errorf("rank never reaped: note %q, %s; want %q, SIGKILL", r.Note, r.Status(), want)
	}
}

// TestStrangerReusingAFinishedRanksPidIsUntouched: a rank that has exited
// keeps its pid (and so its process group id) until the Group is done
// signalling its group, so a stranger started meanwhile cannot get the pid
// and be killed with the rank's group at the end. The test drives
// ns_last_pid to hand the stranger the finished rank's pid if it were free.
func TestStrangerReusingAFinishedRanksPidIsUntouched(t *testing.T) {
	const lastPid = "/proc/sys/kernel/ns_last_pid"
	if f, err := os.OpenFile(lastPid, os.O_WRONLY, 0); err != nil {
		t.Skipf("cannot drive pid allocation: %v", err)
	} else {
		f.Close()
	}
	for _, method := range []string{MethodSpawn, MethodForkserver} {
		t.Run(method, func(t *testing.T) {
			var quick, block Spec
			var opts Options
			if method == MethodSpawn {
				quick, block = helperSpec(0, "exit", "0"), helperSpec(1, "block", testrank.ReadyFD)
			} else {
				fs, python, script := startForkserver(t)
				quick, block = pySpec(0, python, script, "exit", "0"), pySpec(1, python, script, "block")
				opts.Method = fs
			}
			specs := []Spec{quick, block}
			ready := withReady(t, specs[1:])
			g, err := Start(context.Background(), specs, opts)
			if err != nil {
				t.Fatal(err)
			}
			ready()
			pid := g.Pids()[0]
			if !proctest.WaitExit(pid, 10*time.Second) {
				t.Fatal("rank 0 did not exit")
			}
			// Ask the kernel for pid next; if it is free, the stranger gets it.
			if err := os.WriteFile(lastPid, []byte(strconv.Itoa(pid-1)), 0); err != nil {
				t.Fatal(err)
			}
			stranger := exec.Command("sleep", "60")
			stranger.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := stranger.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				_ = stranger.Process.Kill()
				_ = stranger.Wait()
			}()
			if stranger.Process.Pid == pid {
				t.Errorf("a stranger got finished rank 0's pid %d while the Group still signals its group", pid)
			}
			g.Stop(errors.New("test: stop"))
			waitResult(t, g)
			if proctest.WaitExit(stranger.Process.Pid, 0) {
				t.Errorf("the stranger (pid %d, rank 0 had %d) was killed with the job", stranger.Process.Pid, pid)
			}
		})
	}
}
