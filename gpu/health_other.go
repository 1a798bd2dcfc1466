//go:build !linux || !cgo

package gpu

// A XIDWatch watches GPUs for critical XID errors; without NVML it watches
// nothing.
type XIDWatch struct {
	// Warnings are notes about GPUs that could not be watched.
	Warnings []string
}

// WatchXIDs needs NVML: with no UUIDs it returns a watch that does
// nothing; otherwise an *NVMLError unwrapping to ErrNoNVML.
func WatchXIDs(uuids []string, _ func(*XIDError)) (*XIDWatch, error) {
	if len(uuids) == 0 {
		return &XIDWatch{}, nil
	}
	return nil, &NVMLError{Op: "init", GPU: -1, Detail: "NVML needs Linux and cgo", Err: ErrNoNVML}
}

// Close does nothing.
func (*XIDWatch) Close() {}

// PeakGPUMemory needs NVML: with no UUIDs it returns no figures; otherwise
// an *NVMLError unwrapping to ErrNoNVML.
func PeakGPUMemory(uuids []string, _ []int) (map[int]int64, []string, error) {
	if len(uuids) == 0 {
		return map[int]int64{}, nil, nil
	}
	return nil, nil, &NVMLError{Op: "init", GPU: -1, Detail: "NVML needs Linux and cgo", Err: ErrNoNVML}
}
