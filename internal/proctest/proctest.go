//go:build linux

// Package proctest holds helpers the tests of several packages share for
// checking on real processes.
package proctest

import (
	"os"
	"strconv"
	"time"

	"github.com/mpspawn/mpspawn/internal/pidfd"
	"go.uber.org/goleak"
)

// WaitExit waits up to d for pid to exit and reports whether it did. It
// waits on a pidfd, so it is told of the exit at once rather than polling;
// a pid that no longer exists counts as exited.
func WaitExit(pid int, d time.Duration) bool {
	return pidfd.WaitPid(pid, d)
}

// OpenFDs returns this process's open descriptors and what each refers to
// (a path, "pipe:[N]", "socket:[N]", ...), read from /proc/self/fd.
func OpenFDs() map[int]string {
	ents, _ := os.ReadDir("/proc/self/fd")
	fds := map[int]string{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the descriptor ReadDir itself used
		}
		fds[fd] = target
	}
	return fds
}

// IgnoreGuard is the goleak option for the launcher's guard watcher: one
// goroutine per process, waiting on the guard process for as long as the
// process lives (see package launcher/internal/contain).
var IgnoreGuard = goleak.IgnoreAnyFunction("github.com/mpspawn/mpspawn/launcher/internal/contain.(*Guard).watchProcess")
