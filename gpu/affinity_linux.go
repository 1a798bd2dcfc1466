package gpu

import (
	"fmt"

	"github.com/mpspawn/mpspawn/place"
	"golang.org/x/sys/unix"
)

// AllowedCPUs returns the CPUs this process may run on (sched_getaffinity):
// what taskset, numactl or a cgroup cpuset left it. Ranks can be bound only
// within it.
func AllowedCPUs() (place.CPUSet, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("gpu: sched_getaffinity: %w", err)
	}
	out := place.CPUSet{}
	for cpu := range 1024 { // unix.CPUSet holds CPU_SETSIZE (1024) CPUs
		if set.IsSet(cpu) {
			out = append(out, cpu)
		}
	}
	return out, nil
}
