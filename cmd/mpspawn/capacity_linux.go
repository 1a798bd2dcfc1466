package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// What mpspawn holds per rank while it runs: descriptors (the stdout and
// stderr pipes, a pidfd, a control channel, and the child's ends while it
// starts) and memory (two 64 KiB relay buffers, goroutines, bookkeeping).
const (
	fdsPerRank   = 6
	fdsBase      = 64
	bytesPerRank = 256 << 10
	pidsPerRank  = 1 // each rank is at least one process
)

// checkCapacity refuses, before anything starts or is allocated, a number
// of ranks this machine cannot hold: more than the open-file limit, the
// process limit, the pid space or the memory allow. Without it such a job
// runs out of memory with no output, or fails thousands of ranks in.
func checkCapacity(n int) error {
	for _, l := range capacityLimits() {
		if l.max >= 0 && n > l.max {
			return usagef("--nproc-per-node %d: this machine allows at most %d ranks: %s", n, max(l.max, 0), l.why)
		}
	}
	return nil
}

type capacityLimit struct {
	max int // ranks; -1 when unknown or unlimited
	why string
}

func capacityLimits() []capacityLimit {
	var ls []capacityLimit
	var nofile, nproc unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile) == nil && nofile.Cur != unix.RLIM_INFINITY {
		ls = append(ls, capacityLimit{(int(nofile.Cur) - fdsBase) / fdsPerRank,
			fmt.Sprintf("mpspawn holds %d open files per rank and may open %d (ulimit -n)", fdsPerRank, nofile.Cur)})
	}
	if unix.Getrlimit(unix.RLIMIT_NPROC, &nproc) == nil && nproc.Cur != unix.RLIM_INFINITY {
		ls = append(ls, capacityLimit{int(nproc.Cur) / pidsPerRank,
			fmt.Sprintf("this user may run %d processes (ulimit -u)", nproc.Cur)})
	}
	if pidMax, err := readInt("/proc/sys/kernel/pid_max"); err == nil {
		ls = append(ls, capacityLimit{pidMax, fmt.Sprintf("the kernel has %d process ids (kernel.pid_max)", pidMax)})
	}
	if avail, err := memAvailable(); err == nil {
		ls = append(ls, capacityLimit{int(avail / bytesPerRank),
			fmt.Sprintf("mpspawn needs about %d KiB of memory per rank and %d MiB are available", bytesPerRank>>10, avail>>20)})
	}
	return ls
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// memAvailable is /proc/meminfo's MemAvailable, in bytes.
func memAvailable() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no MemAvailable in /proc/meminfo")
}
