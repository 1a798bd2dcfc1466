//go:build linux

package launcher

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/launcher/internal/contain"
)

// TestJobCgroupEmptyWhenTheEndStepReturns: at a normal end, the end step
// itself ends what the ranks left in the job's cgroups (daemons in a new
// session and process group, an orphan): the job cgroup is unpopulated
// the moment it returns, not only after the later removal pass.
func TestJobCgroupEmptyWhenTheEndStepReturns(t *testing.T) {
	if _, err := contain.Base(); err != nil {
		t.Skipf("no cgroups here (%v)", err)
	}
	guard, err := contain.StartGuard()
	if err != nil {
		t.Fatal(err)
	}
	rps := newRanks([]Spec{helperSpec(0, "daemons", os.DevNull, "0")})
	c, err := newContainment(ContainCgroup, rps, guard)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close(DefaultKillWait)
	job := c.cg.Dir
	th := newStarter(1)
	defer th.close()
	rp := rps[0]
	if err := th.start(0, rp); err != nil {
		t.Fatal(err)
	}
	guard.Watch(rp.proc.pid())
	defer guard.Unwatch(rp.proc.pid())
	defer rp.proc.release()
	if ws, err := rp.proc.wait(); err != nil || ws.ExitStatus() != 0 {
		t.Fatalf("rank: %v, %v; want exit 0", ws, err)
	}
	if got := populated(t, job); !got {
		t.Fatalf("job cgroup %s after the rank's exit: populated %v; want true (its daemons)", job, got)
	}
	c.end(rps, DefaultKillWait)
	if got := populated(t, job); got {
		t.Errorf("job cgroup %s when the end step returned: populated %v; want false", job, got)
	}
}

// populated reads cgroup dir's "populated" flag.
func populated(t *testing.T, dir string) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "populated "); ok {
			return v == "1"
		}
	}
	t.Fatalf("%s/cgroup.events has no populated line: %q", dir, data)
	return false
}

// TestDaemonHoldingStdoutAddsNoDrain: a rank that leaves a daemon holding
// its stdout (in a new session, so outside the rank's process group) ends
// the job as soon as it exits: the containment ends the daemon, and with
// it the pipe, before output is drained; the drain timeout (a minute
// here) is not spent waiting for the pipe to close.
func TestDaemonHoldingStdoutAddsNoDrain(t *testing.T) {
	const drain = time.Minute
	for _, cont := range []Containment{ContainCgroup, ContainProcessGroup} {
		t.Run(string(cont), func(t *testing.T) {
			if _, err := contain.Base(); err != nil && cont == ContainCgroup {
				t.Skipf("no cgroups here (%v)", err)
			}
			tag := fmt.Sprintf("MPSPAWN_DRAIN_TEST=%d-%s", os.Getpid(), cont)
			s := helperSpec(0, "stdout-daemon")
			s.Env = append(s.Env, tag)
			out := &lineBuffer{}
			s.Stdout, s.Stderr = out, io.Discard
			opts := Options{Containment: cont, Stop: StopOptions{DrainTimeout: drain}}
			start := time.Now()
			g, err := Start(context.Background(), []Spec{s}, opts)
			if err != nil {
				t.Fatal(err)
			}
			res := waitResult(t, g)
			took := time.Since(start)
			if !res.Succeeded() || res.OutputStalled {
				t.Errorf("Result = succeeded %v, output stalled %v; want true, false", res.Succeeded(), res.OutputStalled)
			}
			if took >= drain {
				t.Errorf("the job ended %v after its start; want within the drain timeout %v (the daemon's pipe was waited for)", took, drain)
			}
			if got := out.String(); !strings.Contains(got, "daemon started") {
				t.Errorf("rank output = %q; want the line written before the rank exited", got)
			}
			for _, pid := range taggedPids(tag) {
				if !pidGone(pid, time.Second) {
					t.Errorf("pid %d (the daemon) alive 1s after the job's end", pid)
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		})
	}
}

// helperStdoutDaemon starts a daemon (a new session) that blocks holding
// this rank's stdout, says so on stdout, and exits 0.
func helperStdoutDaemon() int {
	c := testrank.Command("block", os.DevNull)
	c.Stdout = os.Stdout
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("daemon started")
	return 0
}
