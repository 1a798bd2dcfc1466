// Package pidfd waits for a process to exit through a pidfd (Linux 5.3 and
// later): the caller is told of the exit at once, with no polling, and a
// recycled pid cannot fool it.
package pidfd

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// Wait waits up to d for the process behind fd, a pidfd, to exit and
// reports whether it did.
func Wait(fd int, d time.Duration) bool {
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

// WaitPid is Wait for a pid; a pid that no longer exists counts as exited.
func WaitPid(pid int, d time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH)
	}
	defer unix.Close(fd)
	return Wait(fd, d)
}
