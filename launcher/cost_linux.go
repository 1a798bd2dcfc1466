package launcher

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// readUsage reads rank cgroup dir's CPU time (cpu.stat, always there in
// cgroup v2) and peak memory (memory.peak, where the memory controller is
// on), once every process in it has exited.
func readUsage(dir string, u *usage) {
	if data, err := os.ReadFile(filepath.Join(dir, "cpu.stat")); err == nil {
		var user, sys int64 = -1, -1
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), " ")
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "user_usec":
				user = n
			case "system_usec":
				sys = n
			}
		}
		if user >= 0 && sys >= 0 {
			u.cgroupCPU = true
			u.user, u.sys = time.Duration(user)*time.Microsecond, time.Duration(sys)*time.Microsecond
		}
	}
	if data, err := os.ReadFile(filepath.Join(dir, "memory.peak")); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err == nil {
			u.cgroupPeak = n
		}
	}
}

// usage reads rp's cgroup, when the job has cgroups, into rp.usage.
func (c *containment) usage(rp *rankProc) {
	if c.cg != nil && rp.cgroupPath != "" {
		readUsage(rp.cgroupPath, &rp.usage)
	}
}
