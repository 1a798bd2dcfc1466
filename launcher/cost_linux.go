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

// enableMemory turns the memory controller on for the rank cgroups under
// dir, where the launcher's cgroup hands it down, so that each rank's
// memory.peak exists. Where it cannot (no memory controller in cgroup
// v2, as on hybrid hosts whose memory controller is on v1), the ranks'
// peak memory is their maximum RSS instead.
func enableMemory(dir string) {
	ctl, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil || !containsWord(string(ctl), "memory") {
		return
	}
	_ = os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory"), 0)
}

func containsWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

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
	if c.cg != nil && rp.spec.cgroupPath != "" {
		readUsage(rp.spec.cgroupPath, &rp.usage)
	}
}
