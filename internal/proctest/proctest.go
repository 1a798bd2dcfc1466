//go:build linux

// Package proctest holds helpers the tests of several packages share for
// checking on real processes.
package proctest

import (
	"time"

	"github.com/mpspawn/mpspawn/internal/pidfd"
)

// WaitExit waits up to d for pid to exit and reports whether it did. It
// waits on a pidfd, so it is told of the exit at once rather than polling;
// a pid that no longer exists counts as exited.
func WaitExit(pid int, d time.Duration) bool {
	return pidfd.WaitPid(pid, d)
}
