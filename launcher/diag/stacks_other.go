//go:build !linux

package diag

import (
	"context"
	"syscall"
)

// Stacks need Linux (pidfds, /proc); no rank runs elsewhere.
// Dir is where ranks write their stacks; there is none off Linux.
type Dir struct{ dir string }

// NewDir returns ErrUnsupported.
func NewDir(string) (*Dir, error) { return nil, ErrUnsupported }

// Env returns env.
func (s *Dir) Env(env []string) []string { return env }

// Path returns "".
func (s *Dir) Path() string { return "" }

// Remove does nothing.
func (s *Dir) Remove() {}

// Take says that there are no stacks on this platform.
func Take(int, string, func(syscall.Signal) error, bool, *Capture) *Stack {
	return &Stack{Note: "no stacks on this platform"}
}

// DumpStacks returns ErrUnsupported on platforms other than Linux.
func DumpStacks(context.Context, int) ([]RankStack, error) { return nil, ErrUnsupported }
