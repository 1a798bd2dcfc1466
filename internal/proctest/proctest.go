//go:build linux

// Package proctest holds helpers the tests of several packages share for
// checking on real processes.
package proctest

import (
	"bytes"
	"os"
	"strconv"
	"strings"
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

// Children returns the pids of ppid's living children (not zombies: a
// test process that is a child subreaper may collect orphans' zombies),
// read from /proc.
func Children(ppid int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at its
		// closing parenthesis.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 1 && f[0] != "Z" && f[1] == strconv.Itoa(ppid) {
			pids = append(pids, pid)
		}
	}
	return pids
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
// process lives (see launcher's guard).
var IgnoreGuard = goleak.IgnoreAnyFunction("github.com/mpspawn/mpspawn/launcher.(*guard).watchProcess")
