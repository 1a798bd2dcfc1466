//go:build linux

package launcher

import (
	"context"
	"errors"
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
			opts.GracePeriod = 30 * time.Second // SIGTERM must do it, not SIGKILL
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
	opts.GracePeriod, opts.KillWait = 100*time.Millisecond, 300*time.Millisecond
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
