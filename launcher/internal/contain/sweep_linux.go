package contain

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/internal/pidfd"
	"github.com/mpspawn/mpspawn/internal/procfs"
	"golang.org/x/sys/unix"
)

// The process-group fallback, where cgroups cannot be made: the launcher
// is a child subreaper, so that descendants whose parent died are
// re-parented to it, and every rank carries the job's mark (NewTag) in its
// environment, so that Sweep can tell them apart.

var (
	jobSeq        atomic.Int64
	subreaperOnce sync.Once
)

// Subreaper makes this process a child subreaper (PR_SET_CHILD_SUBREAPER),
// once.
func Subreaper() {
	subreaperOnce.Do(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
}

// NewTag returns a new job's mark, "KEY=VALUE", for every rank's
// environment.
func NewTag() string {
	return fmt.Sprintf("MPSPAWN_JOB=%d-%d", os.Getpid(), jobSeq.Add(1))
}

// Sweep kills this process's children that carry tag in their
// environment and are not in known (descendants re-parented to it, a
// subreaper, when their parent died), and reaps them, waiting at most
// wait for each; killing one may orphan more, so it goes round until none
// is left.
func Sweep(known map[int]bool, tag string, wait time.Duration) {
	for range 16 {
		var found []int
		for _, pid := range procfs.Children(os.Getpid()) {
			if !known[pid] && procfs.HasEnv(pid, tag) {
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
