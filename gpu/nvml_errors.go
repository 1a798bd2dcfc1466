package gpu

import (
	"errors"
	"fmt"
)

// ErrNoNVML is what an *NVMLError unwraps to when the NVML library
// (libnvidia-ml.so.1) is not installed, which means there is no NVIDIA
// driver, or when this build cannot load it at all (not Linux, or built
// without cgo).
var ErrNoNVML = errors.New("gpu: NVML library not found")

// ErrNVMLFailed is what an *NVMLError unwraps to when NVML is installed but
// failed: the driver is not loaded, the caller lacks permission, or a device
// query failed.
var ErrNVMLFailed = errors.New("gpu: NVML failed")

// NVMLError is why discovery read no GPU: NVML is missing or failed. It
// unwraps to ErrNoNVML or ErrNVMLFailed.
type NVMLError struct {
	Op     string // the call that failed: "init", "device count", or a query of one GPU ("uuid", "memory", ...)
	GPU    int    // the GPU queried (its NVML index), or -1 when Op is not about one GPU
	Detail string // what NVML returned, or why it could not be loaded
	Err    error  // ErrNoNVML or ErrNVMLFailed
}

func (e *NVMLError) Error() string {
	if e.GPU >= 0 {
		return fmt.Sprintf("gpu: nvml gpu %d: %s: %s", e.GPU, e.Op, e.Detail)
	}
	return fmt.Sprintf("gpu: nvml %s: %s", e.Op, e.Detail)
}

// Unwrap makes errors.Is(err, ErrNoNVML) or errors.Is(err, ErrNVMLFailed)
// true.
func (e *NVMLError) Unwrap() error { return e.Err }
