//go:build !linux

package contain

import (
	"errors"
	"os"
)

// ErrUnsupported is returned off Linux: there is no guard and no cgroup.
var ErrUnsupported = errors.New("contain: only Linux is supported")

// Guard is the launcher's side of the guard process; there is none off
// Linux.
type Guard struct{}

// StartGuard returns ErrUnsupported.
func StartGuard() (*Guard, error) { return nil, ErrUnsupported }

// Watch does nothing.
func (*Guard) Watch(int) {}

// Unwatch does nothing.
func (*Guard) Unwatch(int) {}

// RemoveOnDeath returns ErrUnsupported.
func RemoveOnDeath(string) error { return ErrUnsupported }

// MkdirTemp is os.MkdirTemp: there is no guard to tell.
func MkdirTemp(dir, pattern string) (string, error) { return os.MkdirTemp(dir, pattern) }

// CgroupError returns ErrUnsupported.
func CgroupError() error { return ErrUnsupported }
