//go:build unix

package launcher

import (
	"syscall"
	"time"
)

// rusageCost is r's user and system CPU time and its maximum resident set
// size in bytes (ru_maxrss is in kilobytes on Linux).
func rusageCost(r *syscall.Rusage) (user, sys time.Duration, maxRSS int64) {
	return time.Duration(r.Utime.Nano()), time.Duration(r.Stime.Nano()), int64(r.Maxrss) * 1024
}
