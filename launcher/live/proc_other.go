//go:build !linux

package live

type procStat struct {
	state      byte
	ticks      uint64
	threads    int
	rssPages   int64
	startTicks uint64
}

const clockTicks = 100

var pageSize int64 = 4096

// readStat reads nothing: there is no /proc to sample here.
func readStat(int, []byte) (procStat, bool) { return procStat{}, false }

// StartTicks is 0: there is no /proc here.
func StartTicks(int) uint64 { return 0 }
