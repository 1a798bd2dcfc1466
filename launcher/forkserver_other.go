//go:build !linux

package launcher

import (
	"context"
)

// A Forkserver is a running forkserver; see ForkserverConfig. On platforms
// other than Linux none can be started.
type Forkserver struct{}

// newForkserver returns ErrUnsupported on platforms other than Linux.
func newForkserver(ForkserverConfig) (*Forkserver, error) { return nil, ErrUnsupported }

// Ready returns ErrUnsupported.
func (*Forkserver) Ready(context.Context) error { return ErrUnsupported }

// Pid returns 0.
func (*Forkserver) Pid() int { return 0 }

// Close does nothing.
func (*Forkserver) Close() error { return nil }

func (*Forkserver) start(*rankProc) error { return ErrUnsupported }
