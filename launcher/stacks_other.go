//go:build !linux

package launcher

import (
	"context"
	"syscall"
)

// Stacks need Linux (pidfds, /proc); no rank runs elsewhere.
type stackDir struct{ dir string }

func newStackDir(string) (*stackDir, error)   { return nil, ErrUnsupported }
func (s *stackDir) env(env []string) []string { return env }
func (s *stackDir) remove()                   {}

func stackOf(int, string, func(syscall.Signal) error, bool, *stackCapture) *Stack {
	return &Stack{Note: "no stacks on this platform"}
}

// DumpStacks returns ErrUnsupported on platforms other than Linux.
func DumpStacks(context.Context, int) ([]RankStack, error) { return nil, ErrUnsupported }
