package launcher

import (
	"fmt"
	"strings"
	"syscall"
	"time"
)

// Cost is what one rank cost: its wall time, CPU time and peak memory.
//
// Where they come from (Source says which):
//   - under cgroup containment, CPU time is the rank's cgroup's cpu.stat
//     (user_usec, system_usec): the rank and everything it started,
//     reaped or not; peak memory is the cgroup's memory.peak where the
//     memory controller is enabled for it (cgroup v2, Linux 5.19);
//   - otherwise, and for memory where memory.peak is not there, the
//     rank's own resource usage as reaping it returned it (wait4): its CPU
//     and that of the children it reaped, and its own maximum resident
//     set size. Under the forkserver start method the server reaps the
//     rank and sends that usage back.
type Cost struct {
	Wall   time.Duration
	User   time.Duration
	System time.Duration
	// PeakMemory is in bytes; 0 when unknown.
	PeakMemory int64
	// CPUSource is "cgroup cpu.stat" or "wait4 rusage"; empty when the
	// CPU time is unknown (a rank that was lost).
	CPUSource string
	// MemorySource is "cgroup memory.peak" or "wait4 maxrss" (the rank
	// process's own maximum resident set, not its children's).
	MemorySource string
	// GPUMemory is the rank's peak GPU memory in bytes, summed over its
	// GPUs; 0 when unknown. The launcher does not talk to NVML: the
	// caller fills it in (package gpu's PeakGPUMemory).
	GPUMemory int64
}

// The sources of a Cost's figures.
const (
	SourceCgroupCPU    = "cgroup cpu.stat"
	SourceRusageCPU    = "wait4 rusage"
	SourceCgroupMemory = "cgroup memory.peak"
	SourceMaxRSS       = "wait4 maxrss"
)

// CPU is the rank's user plus system CPU time.
func (c Cost) CPU() time.Duration { return c.User + c.System }

// usage is what the launcher read of a rank when it was done with it.
type usage struct {
	rusage *syscall.Rusage // from reaping it; nil when not known

	cgroupCPU  bool // user and sys are the cgroup's
	user, sys  time.Duration
	cgroupPeak int64 // memory.peak in bytes, or 0
}

// cost is the Cost of a rank that ran from start to end.
func (u usage) cost(start, end time.Time) Cost {
	c := Cost{}
	if !start.IsZero() && !end.IsZero() {
		c.Wall = end.Sub(start)
	}
	switch {
	case u.cgroupCPU:
		c.User, c.System, c.CPUSource = u.user, u.sys, SourceCgroupCPU
	case u.rusage != nil:
		c.User, c.System, _ = rusageCost(u.rusage)
		c.CPUSource = SourceRusageCPU
	}
	switch {
	case u.cgroupPeak > 0:
		c.PeakMemory, c.MemorySource = u.cgroupPeak, SourceCgroupMemory
	case u.rusage != nil:
		if _, _, rss := rusageCost(u.rusage); rss > 0 {
			c.PeakMemory, c.MemorySource = rss, SourceMaxRSS
		}
	}
	return c
}

// Bytes formats a size in binary units: "1.2 GiB", "300.0 MiB", "512 B".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// Seconds formats a duration as seconds with one decimal: "12.4 s".
func Seconds(d time.Duration) string {
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// CostLine is the one line that sums up a job that succeeded: "4 ranks ok
// in 12.4 s; CPU 46.1 s; peak memory 1.2 GiB (rank 2)". The job's time is
// from the first rank's start to the last rank's end; CPU is every rank's,
// summed; the peak is the largest rank's, with its source when it is the
// rank process's own maximum RSS.
func (r *Result) CostLine() string {
	if len(r.Ranks) == 0 {
		return ""
	}
	var first, last time.Time
	var cpu time.Duration
	peak, gpuPeak := -1, -1
	for i := range r.Ranks {
		x := &r.Ranks[i]
		if first.IsZero() || (!x.Started.IsZero() && x.Started.Before(first)) {
			first = x.Started
		}
		if x.Ended.After(last) {
			last = x.Ended
		}
		cpu += x.Cost.CPU()
		if x.Cost.PeakMemory > 0 && (peak < 0 || x.Cost.PeakMemory > r.Ranks[peak].Cost.PeakMemory) {
			peak = i
		}
		if x.Cost.GPUMemory > 0 && (gpuPeak < 0 || x.Cost.GPUMemory > r.Ranks[gpuPeak].Cost.GPUMemory) {
			gpuPeak = i
		}
	}
	noun := "ranks"
	if len(r.Ranks) == 1 {
		noun = "rank"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s ok in %s; CPU %s", len(r.Ranks), noun, Seconds(last.Sub(first)), Seconds(cpu))
	if peak >= 0 {
		c := r.Ranks[peak].Cost
		fmt.Fprintf(&b, "; peak memory %s (rank %d", Bytes(c.PeakMemory), r.Ranks[peak].Rank)
		if c.MemorySource == SourceMaxRSS {
			b.WriteString(", max RSS of the rank process")
		}
		b.WriteString(")")
	}
	if gpuPeak >= 0 {
		fmt.Fprintf(&b, "; peak GPU memory %s (rank %d)", Bytes(r.Ranks[gpuPeak].Cost.GPUMemory), r.Ranks[gpuPeak].Rank)
	}
	return b.String()
}
