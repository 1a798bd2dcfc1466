package live

import (
	"bytes"
	"os"
	"strconv"
)

// procStat is what a sample reads of a process in /proc/PID/stat.
type procStat struct {
	state      byte
	ticks      uint64 // utime+stime, in clock ticks
	threads    int
	rssPages   int64
	startTicks uint64
}

// clockTicks is USER_HZ, the unit of /proc's times: 100 on every Linux
// the launcher runs on (the kernel's ABI fixes it for /proc).
const clockTicks = 100

var pageSize = int64(os.Getpagesize())

// readStat reads /proc/PID/stat into buf (reused) and parses it.
func readStat(pid int, buf []byte) (procStat, bool) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	n, _ := f.Read(buf)
	f.Close()
	return parseStat(buf[:n])
}

// parseStat parses a /proc/PID/stat line: after the command, which may
// hold spaces and parentheses (cut at the last closing one), field 3 is
// the state, 14 and 15 utime and stime, 20 num_threads, 22 starttime and
// 24 rss.
func parseStat(b []byte) (procStat, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	var st procStat
	field := 2
	for _, f := range bytes.Fields(b[i+1:]) {
		field++
		switch field {
		case 3:
			st.state = f[0]
		case 14, 15:
			v, _ := strconv.ParseUint(string(f), 10, 64)
			st.ticks += v
		case 20:
			st.threads, _ = strconv.Atoi(string(f))
		case 22:
			st.startTicks, _ = strconv.ParseUint(string(f), 10, 64)
		case 24:
			st.rssPages, _ = strconv.ParseInt(string(f), 10, 64)
			return st, st.state != 0
		}
	}
	return procStat{}, false
}

// StartTicks is process pid's start time as /proc/PID/stat gives it, or
// 0 when it is gone.
func StartTicks(pid int) uint64 {
	var buf [1024]byte
	st, ok := readStat(pid, buf[:])
	if !ok {
		return 0
	}
	return st.startTicks
}
