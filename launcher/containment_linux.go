package launcher

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/internal/pidfd"
	"github.com/mpspawn/mpspawn/internal/procfs"
	"golang.org/x/sys/unix"
)

// containment is how a Group's descendants end with it: the job's cgroups,
// or, where cgroups cannot be made, process groups and a sweep of the
// descendants re-parented to the launcher.
type containment struct {
	kind  Containment
	note  string // why cgroups are not used, when they are not
	guard *guard
	cg    *jobCgroup // ContainCgroup
	tag   string     // ContainProcessGroup: the job's mark, "KEY=VALUE", in every rank's environment
}

var (
	jobSeq        atomic.Int64
	subreaperOnce sync.Once
)

// contain sets up the containment want for the ranks of specs, changing
// specs to match (each rank's cgroup, or the job's mark).
func contain(want Containment, specs []Spec, g *guard) (*containment, error) {
	c := &containment{guard: g}
	switch want {
	case ContainAuto, ContainCgroup:
		// The guard hears of the job cgroups' prefix before the first is
		// made: a launcher killed in between leaves none behind.
		g.watchCgroups()
		cg, err := newJobCgroup(len(specs))
		if err == nil {
			c.kind, c.cg = ContainCgroup, cg
			for i := range specs {
				specs[i].cgroup, specs[i].cgroupPath = cg.fds[i], cg.ranks[i]
			}
			return c, nil
		}
		if want == ContainCgroup {
			return nil, err
		}
		c.note = err.Error()
	case ContainProcessGroup:
	default:
		return nil, fmt.Errorf("launcher: containment %q: want %q, %q or empty", want, ContainCgroup, ContainProcessGroup)
	}
	c.kind = ContainProcessGroup
	subreaperOnce.Do(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
	c.tag = fmt.Sprintf("MPSPAWN_JOB=%d-%d", os.Getpid(), jobSeq.Add(1))
	for i := range specs {
		specs[i].Env = append(slices.Clip(specs[i].Env), c.tag)
	}
	return c, nil
}

// kill ends every process of the job's cgroups now; process groups are
// signalled by the supervisor.
func (c *containment) kill() {
	if c.cg != nil {
		_ = c.cg.kill()
	}
}

// end ends what the ranks left behind, once they have exited, waiting at
// most wait for it to be gone.
func (c *containment) end(ranks []*rankProc, wait time.Duration) {
	if c.cg != nil {
		if c.cg.kill() == nil {
			c.cg.waitEmpty(wait)
		}
		return
	}
	c.sweep(ranks, wait)
}

// sweep kills the launcher's children that carry the job's mark and are
// not its ranks (descendants re-parented to it, a subreaper, when their
// parent died), and reaps them; killing one may orphan more, so it goes
// round until none is left.
func (c *containment) sweep(ranks []*rankProc, wait time.Duration) {
	known := map[int]bool{}
	for _, rp := range ranks {
		known[rp.proc.pid()] = true
	}
	for range 16 {
		var found []int
		for _, pid := range procfs.Children(os.Getpid()) {
			if !known[pid] && procfs.HasEnv(pid, c.tag) {
				found = append(found, pid)
			}
		}
		if len(found) == 0 {
			return
		}
		for _, pid := range found {
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				continue
			}
			_ = unix.PidfdSendSignal(fd, syscall.SIGKILL, nil, 0)
			pidfd.Wait(fd, wait)
			unix.Close(fd)
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
	}
}

// close removes the job's cgroups, killing again, and waiting at most
// wait for, whatever entered them since end. What it cannot remove (a
// process that does not exit after SIGKILL) is left to the guard, which
// removes this process's job cgroups when it exits.
func (c *containment) close(wait time.Duration) {
	if c.cg != nil {
		_ = c.cg.remove(wait)
	}
}
