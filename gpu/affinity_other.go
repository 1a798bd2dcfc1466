//go:build !linux

package gpu

import "github.com/mpspawn/mpspawn/place"

// AllowedCPUs returns nil where the platform has no sched_getaffinity: every
// CPU is allowed.
func AllowedCPUs() (place.CPUSet, error) { return nil, nil }
