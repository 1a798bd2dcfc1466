//go:build linux

package launcher

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/launcher/internal/contain"
)

// TestDaemonsEndWithTheJob: daemons of every kind a rank starts (a new
// session, a new process group, a double fork) are gone within 1 s of the
// job's end — at a normal end, after a sibling's failure, on SIGINT — with
// cgroups, and with the process-group fallback (a subreaper's sweep of the
// descendants that carry the job's mark).
func TestDaemonsEndWithTheJob(t *testing.T) {
	if _, err := contain.Base(); err != nil {
		t.Logf("cgroups unavailable here (%v): only the fallback is tested", err)
	}
	endings := []struct {
		name string
		end  func(t *testing.T, g *Group, pids []int)
		code string // rank 0's exit code after starting its daemons; "" blocks
	}{
		{"normal end", func(*testing.T, *Group, []int) {}, "0"},
		{"sibling failure", func(t *testing.T, g *Group, pids []int) { _ = syscall.Kill(pids[1], syscall.SIGKILL) }, ""},
		{"SIGINT", func(t *testing.T, g *Group, pids []int) { g.Signal(syscall.SIGINT) }, ""},
	}
	type setup struct {
		method string
		cont   Containment
	}
	for _, su := range []setup{{MethodSpawn, ContainCgroup}, {MethodSpawn, ContainProcessGroup}, {MethodForkserver, ContainCgroup}, {MethodForkserver, ContainProcessGroup}} {
		method, cont := su.method, su.cont
		for _, e := range endings {
			t.Run(method+"/"+string(cont)+"/"+e.name, func(t *testing.T) {
				if _, err := contain.Base(); err != nil && cont == ContainCgroup {
					t.Skip("no cgroups here")
				}
				tag := fmt.Sprintf("MPSPAWN_DAEMON_TEST=%d-%s-%s-%s", os.Getpid(), method, cont, strings.ReplaceAll(e.name, " ", "_"))
				args := []string{testrank.ReadyFD}
				if e.code != "" {
					args = append(args, e.code)
				}
				specs := []Spec{helperSpec(0, "daemons", args...), helperSpec(1, "block", testrank.ReadyFD)}
				var opts Options
				if method == MethodForkserver {
					fs, python, script := startForkserver(t)
					specs = []Spec{pySpec(0, python, script, append([]string{"daemons"}, args[1:]...)...), pySpec(1, python, script, "block")}
					opts.Method = fs
				}
				opts.Stop.GracePeriod, opts.Containment = 5*time.Second, cont
				for i := range specs {
					specs[i].Env = append(specs[i].Env, tag)
				}
				ready := withReady(t, specs)
				g, err := Start(context.Background(), specs, opts)
				if err != nil {
					t.Fatal(err)
				}
				var pids []int
				for _, l := range ready() {
					pid, _ := strconv.Atoi(strings.Fields(l)[0])
					pids = append(pids, pid)
				}
				// A forked rank's /proc environ is its server's: count the daemons.
				if n := len(taggedPids(tag)); n < 3 {
					t.Errorf("before the end: %d processes of the job; want at least 3 (the daemons)", n)
				}
				if e.code == "0" {
					g.Stop(nil) // rank 1 blocks: the end of the job is rank 0's
				}
				e.end(t, g, pids)
				res := waitResult(t, g)
				if res.Containment != cont {
					t.Errorf("Result.Containment = %q; want %q", res.Containment, cont)
				}
				for _, pid := range taggedPids(tag) {
					if !pidGone(pid, time.Second) {
						t.Errorf("pid %d of the job alive 1s after its end", pid)
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			})
		}
	}
}

// TestDaemonsEndWhenTheLauncherIsKilled: with cgroups, a launcher
// SIGKILLed leaves nothing either: its guard kills the job's cgroups and
// removes them.
func TestDaemonsEndWhenTheLauncherIsKilled(t *testing.T) {
	if _, err := contain.Base(); err != nil {
		t.Skipf("no cgroups here (%v); without them a daemon outside the ranks' groups outlives a SIGKILLed launcher, as documented", err)
	}
	tag := fmt.Sprintf("MPSPAWN_DAEMON_TEST=%d-sigkill", os.Getpid())
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := testrank.Command("launcher-daemons", testrank.ReadyFD)
	cmd.Env = append(os.Environ(), tag)
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	buf := make([]byte, 64)
	if n, _ := r.Read(buf); n == 0 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("the launcher's rank never reported")
	}
	if n := len(taggedPids(tag)); n < 5 {
		t.Errorf("before the kill: %d processes; want at least 5 (the launcher, a rank, 3 daemons)", n)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	for _, pid := range taggedPids(tag) {
		if !pidGone(pid, time.Second) {
			t.Errorf("pid %d alive 1s after its launcher was SIGKILLed", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// The guard removes the cgroups once they are empty; nothing tells
	// this test when it is done: look for a while.
	base, _ := contain.Base()
	dead := filepath.Join(base, fmt.Sprintf("mpspawn-%d-1", cmd.Process.Pid))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(dead); os.IsNotExist(err) {
			return
		}
	}
	t.Errorf("the dead launcher's cgroup %s is still there 10s later", dead)
}

// helperLauncherDaemons runs one rank that starts daemons and reports on
// this process's fd 3, and waits.
func helperLauncherDaemons() int {
	s := helperSpec(0, "daemons", testrank.ReadyFD)
	s.ExtraFiles = []*os.File{os.NewFile(3, "ready")}
	g, err := Start(context.Background(), []Spec{s}, Options{Containment: ContainCgroup})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	g.Wait()
	return 0
}
