//go:build !unix

package launcher

import (
	"syscall"
	"time"
)

// rusageCost knows no resource usage on this platform.
func rusageCost(*syscall.Rusage) (user, sys time.Duration, maxRSS int64) { return 0, 0, 0 }
