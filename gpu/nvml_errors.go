package gpu

import "errors"

// ErrNoNVML is wrapped by discovery errors when the NVML library
// (libnvidia-ml.so.1) is not installed, which means there is no NVIDIA
// driver, or when this build cannot load it at all (not Linux, or built
// without cgo).
var ErrNoNVML = errors.New("NVML library not found")

// ErrNVMLFailed is wrapped by discovery errors when NVML is installed but
// failed: the driver is not loaded, the caller lacks permission, or a device
// query failed.
var ErrNVMLFailed = errors.New("NVML failed")
