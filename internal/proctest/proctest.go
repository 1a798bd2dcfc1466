//go:build linux

// Package proctest holds helpers the tests of several packages share for
// checking on real processes.
package proctest

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// WaitExit waits up to d for pid to exit and reports whether it did. It
// waits on a pidfd, so it is told of the exit at once rather than polling;
// a pid that no longer exists counts as exited.
func WaitExit(pid int, d time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(d)
	for {
		n, err := unix.Poll(fds, max(0, int(time.Until(deadline).Milliseconds())))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return n == 1
	}
}
