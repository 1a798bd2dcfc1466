package launcher

import (
	"fmt"
	"slices"
	"time"

	"github.com/mpspawn/mpspawn/launcher/internal/contain"
)

// containment is how a Group's descendants end with it: the job's cgroups,
// or, where cgroups cannot be made, process groups and a sweep of the
// descendants re-parented to the launcher (see package contain).
type containment struct {
	kind  Containment
	note  string // why cgroups are not used, when they are not
	guard *contain.Guard
	cg    *contain.Job // ContainCgroup
	tag   string       // ContainProcessGroup: the job's mark, "KEY=VALUE", in every rank's environment
}

// newContainment sets up the containment want for ranks: each rank's
// cgroup, or the job's mark in each rank's environment.
func newContainment(want Containment, ranks []*rankProc, g *contain.Guard) (*containment, error) {
	c := &containment{guard: g}
	switch want {
	case ContainAuto, ContainCgroup:
		// The guard hears of the job cgroups' prefix before the first is
		// made: a launcher killed in between leaves none behind.
		g.WatchCgroups()
		cg, err := contain.NewJob(len(ranks))
		if err == nil {
			c.kind, c.cg = ContainCgroup, cg
			for i, rp := range ranks {
				rp.cgroup, rp.cgroupPath = cg.FDs[i], cg.Ranks[i]
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
	contain.Subreaper()
	c.tag = contain.NewTag()
	for _, rp := range ranks {
		rp.spec.Env = append(slices.Clip(rp.spec.Env), c.tag)
	}
	return c, nil
}

// kill ends every process of the job's cgroups now; process groups are
// signalled by the supervisor.
func (c *containment) kill() {
	if c.cg != nil {
		_ = c.cg.Kill()
	}
}

// end ends what the ranks left behind, once they have exited, waiting at
// most wait for it to be gone.
func (c *containment) end(ranks []*rankProc, wait time.Duration) {
	if c.cg != nil {
		if c.cg.Kill() == nil {
			c.cg.WaitEmpty(wait)
		}
		return
	}
	known := map[int]bool{}
	for _, rp := range ranks {
		known[rp.proc.pid()] = true
	}
	contain.Sweep(known, c.tag, wait)
}

// close removes the job's cgroups, killing again, and waiting at most
// wait for, whatever entered them since end. What it cannot remove (a
// process that does not exit after SIGKILL) is left to the guard, which
// removes this process's job cgroups when it exits.
func (c *containment) close(wait time.Duration) {
	if c.cg != nil {
		_ = c.cg.Remove(wait)
	}
}

// MkdirTemp makes a new directory (mode 0700) in dir, os.TempDir() when
// empty, named pattern with a random string in place of its last "*", as
// os.MkdirTemp does: a scratch directory, say. The launcher's guard
// removes it (recursively, not following a symbolic link) if this process
// dies before it removes the directory itself, and hears of its name
// before the directory is made: a launcher killed at any moment, even by
// SIGKILL, leaves none behind.
func MkdirTemp(dir, pattern string) (string, error) { return contain.MkdirTemp(dir, pattern) }

// CgroupError says why this process cannot contain its jobs with cgroups
// (see ContainCgroup), or returns nil when it can.
func CgroupError() error { return contain.CgroupError() }
