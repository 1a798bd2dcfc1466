//go:build linux

package ipc

import "golang.org/x/sys/unix"

// nofile is the process's RLIMIT_NOFILE (its soft limit), or 0 when it
// cannot be read.
func nofile() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return 0
	}
	return rl.Cur
}
