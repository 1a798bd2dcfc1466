package contain

import (
	"bufio"
	"errors"
	"fmt"
	"github.com/mpspawn/mpspawn/launcher/internal/guardrole"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Job is one launcher.Group's cgroup v2 subtree: a cgroup for the job under
// the launcher's own, and one child per rank, which the rank is born into
// (clone3 CLONE_INTO_CGROUP for spawn; the forkserver moves its child in
// before the child runs anything). Whatever a rank starts stays in its cgroup —
// setsid, double forks and new process groups included — so cgroup.kill
// ends every descendant at once, and nothing outlives the job.
type Job struct {
	Dir   string     // the job's cgroup
	Ranks []string   // each rank's cgroup, by index
	FDs   []*os.File // each rank's cgroup directory, for CLONE_INTO_CGROUP
}

// cgroupSeq numbers the job cgroups of this process.
var cgroupSeq atomic.Int64

// cgroupBase is where job cgroups are made: the launcher's own cgroup in
// the cgroup v2 hierarchy, found once.
var cgroupBase = sync.OnceValues(findCgroupBase)

// Base is where this process makes its job cgroups: its own cgroup in the
// cgroup v2 hierarchy, or an error saying why it cannot make them there.
func Base() (string, error) { return cgroupBase() }

// findCgroupBase finds the cgroup2 mount (from /proc/self/mountinfo; in the
// hybrid layout it sits beside the v1 controllers) and this process's
// cgroup in it (the "0::" line of /proc/self/cgroup), and checks that a
// cgroup can be made there with cgroup.kill (Linux 5.14).
func findCgroupBase() (string, error) {
	mount, err := Mount()
	if err != nil {
		return "", err
	}
	own, err := ownCgroup()
	if err != nil {
		return "", err
	}
	base := filepath.Join(mount, own)
	probe := filepath.Join(base, fmt.Sprintf("mpspawn-probe-%d", os.Getpid()))
	if err := os.Mkdir(probe, 0o755); err != nil {
		return "", fmt.Errorf("contain: cgroups: cannot make a cgroup under %s: %w", base, err)
	}
	defer os.Remove(probe)
	if _, err := os.Stat(filepath.Join(probe, "cgroup.kill")); err != nil {
		return "", fmt.Errorf("contain: cgroups: no cgroup.kill (Linux 5.14 or later): %w", err)
	}
	return base, nil
}

// CgroupError says why this process cannot contain its jobs with cgroups
// (see launcher.ContainCgroup), or returns nil when it can.
func CgroupError() error {
	_, err := cgroupBase()
	return err
}

// Mount is the mount point of the cgroup v2 hierarchy.
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("contain: cgroups: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, fs := strings.Fields(pre), strings.Fields(post)
		if ok && len(fields) >= 5 && len(fs) > 0 && fs[0] == "cgroup2" {
			return unescapeMount(fields[4]), nil
		}
	}
	return "", errors.New("contain: cgroups: no cgroup2 hierarchy is mounted")
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownCgroup is this process's cgroup in the v2 hierarchy.
func ownCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("contain: cgroups: %w", err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("contain: cgroups: this process has no cgroup v2 path")
}

// Prefix is what the paths of this process's job cgroups start
// with; the guard kills every cgroup named so when the process dies.
func Prefix(base string) string {
	return filepath.Join(base, fmt.Sprintf("mpspawn-%d-", os.Getpid()))
}

// NewJob makes the job's cgroup with n rank cgroups in it.
func NewJob(n int) (*Job, error) {
	base, err := cgroupBase()
	if err != nil {
		return nil, err
	}
	c := &Job{Dir: Prefix(base) + strconv.FormatInt(cgroupSeq.Add(1), 10)}
	if err := os.Mkdir(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("contain: cgroups: %w", err)
	}
	enableMemory(c.Dir)
	for i := range n {
		dir := filepath.Join(c.Dir, "rank-"+strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			_ = c.Remove(0) // nothing ran in them
			return nil, fmt.Errorf("contain: cgroups: %w", err)
		}
		f, err := os.Open(dir)
		if err != nil {
			_ = c.Remove(0)
			return nil, fmt.Errorf("contain: cgroups: %w", err)
		}
		c.Ranks, c.FDs = append(c.Ranks, dir), append(c.FDs, f)
	}
	return c, nil
}

// Kill ends every process in the job's cgroups at once (SIGKILL from the
// kernel, to each process however it got there).
func (c *Job) Kill() error {
	if err := os.WriteFile(filepath.Join(c.Dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("contain: cgroups: kill %s: %w", c.Dir, err)
	}
	return nil
}

// WaitEmpty waits at most d for the last process in the job's cgroups to
// exit, watching cgroup.events (the kernel wakes pollers of it with
// POLLPRI when "populated" changes), and reports whether it did.
func (c *Job) WaitEmpty(d time.Duration) bool {
	f, err := os.Open(filepath.Join(c.Dir, "cgroup.events"))
	if err != nil {
		return false
	}
	defer f.Close()
	deadline := time.Now().Add(d)
	for {
		data := make([]byte, 256)
		n, _ := f.ReadAt(data, 0)
		if strings.Contains(string(data[:n]), "populated 0") {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLPRI}}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			return false
		}
	}
}

// removePasses bounds remove's passes over the job's cgroups, as the
// guard's.
const removePasses = guardrole.Passes

// Remove closes the rank cgroups' descriptors and removes the job's
// cgroups, deepest first (a rank may have made cgroups of its own). A
// cgroup that a process entered after the job's last kill stays
// populated, and rmdir fails with EBUSY: remove then kills the job's
// cgroups again, waits at most wait for them to empty and, if they did,
// tries again, up to removePasses in all. It returns what it could not
// remove; the guard tries again when this process exits.
func (c *Job) Remove(wait time.Duration) error {
	for _, f := range c.FDs {
		f.Close()
	}
	c.FDs = nil
	var err error
	for pass := range removePasses {
		if pass > 0 && (c.Kill() != nil || !c.WaitEmpty(wait)) {
			break // a process that outlives SIGKILL for wait outlives another pass too
		}
		if err = removeTree(c.Dir); err == nil || !errors.Is(err, unix.EBUSY) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("contain: cgroups: remove %s: %w", c.Dir, err)
	}
	return nil
}

// removeTree removes the cgroup dir and the cgroups under it, children
// first (the guard's code: it does the same when this process is gone).
func removeTree(dir string) error { return guardrole.RemoveTree(dir) }

// enableMemory turns the memory controller on for the rank cgroups under
// dir, where the launcher's cgroup hands it down, so that each rank's
// memory.peak exists. Where it cannot (no memory controller in cgroup
// v2, as on hybrid hosts whose memory controller is on v1), the ranks'
// peak memory is their maximum RSS instead.
func enableMemory(dir string) {
	ctl, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil || !slices.Contains(strings.Fields(string(ctl)), "memory") {
		return
	}
	_ = os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory"), 0)
}
