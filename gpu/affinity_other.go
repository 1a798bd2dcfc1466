//go:build !linux

package gpu

// AllowedCPUs returns nil where the platform has no sched_getaffinity: every
// CPU is allowed.
func AllowedCPUs() (CPUSet, error) { return nil, nil }
