//go:build !linux || !cgo

package gpu

// NVMLBuiltIn reports whether this build can load NVML (Linux, with cgo).
const NVMLBuiltIn = false

// NVML stands in for the NVML library where this build cannot load it (not
// Linux, or built without cgo); whatever is passed is ignored.
type NVML any

// newNVML returns nil: there is no NVML library to load in this build.
func newNVML() NVML { return nil }

// nvmlGPUs always fails with an *NVMLError unwrapping to ErrNoNVML, as NVML
// is loaded through cgo on Linux only.
func nvmlGPUs(NVML, string) (gpus []Device, links [][]Link, warnings []string, err error) {
	return nil, nil, nil, &NVMLError{Op: "init", GPU: -1, Detail: "NVML needs Linux and cgo", Err: ErrNoNVML}
}
