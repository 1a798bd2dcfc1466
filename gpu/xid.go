package gpu

import "fmt"

// XIDError is a critical XID error that NVML reported for one of the job's
// GPUs (see WatchXIDs): the GPU, the XID and what it means.
type XIDError struct {
	Index   int    // the GPU's NVML index
	UUID    string // the GPU's UUID
	XID     uint64 // the XID number
	Meaning string // what the XID means, "GPU has fallen off the bus"
}

func (e *XIDError) Error() string { return "gpu: " + e.Reason() }

// Reason is the error in words, without the package prefix: "GPU 3
// (GPU-...) reported XID 79: GPU has fallen off the bus".
func (e *XIDError) Reason() string {
	return fmt.Sprintf("GPU %d (%s) reported XID %d: %s", e.Index, e.UUID, e.XID, e.Meaning)
}

// applicationXIDs are XIDs that an application's own fault causes (an
// illegal memory access, a kernel stopped by the user): the rank that
// caused it fails on its own, and the GPU is fine. WatchXIDs ignores them,
// as NVIDIA's Kubernetes device plugin does.
var applicationXIDs = map[uint64]bool{13: true, 31: true, 43: true, 45: true, 68: true, 109: true}

// xidMeanings are the meanings of the common XIDs, from NVIDIA's XID
// catalogue.
var xidMeanings = map[uint64]string{
	13:  "graphics engine exception",
	31:  "GPU memory page fault",
	32:  "invalid or corrupted push buffer stream",
	38:  "driver firmware error",
	43:  "GPU stopped processing",
	45:  "preemptive cleanup, due to previous errors",
	48:  "double-bit ECC error",
	61:  "internal micro-controller breakpoint/warning",
	62:  "internal micro-controller halt",
	63:  "ECC page retirement or row remapping recording event",
	64:  "ECC page retirement or row remapper recording failure",
	68:  "NVDEC0 exception",
	69:  "graphics engine class error",
	74:  "NVLink error",
	79:  "GPU has fallen off the bus",
	92:  "high single-bit ECC error rate",
	94:  "contained ECC error",
	95:  "uncontained ECC error",
	109: "context switch timeout",
	119: "GSP RPC timeout",
	120: "GSP error",
	121: "C2C link corrected error",
	140: "ECC unrecovered error",
}

// XIDMeaning says what an XID means, or "unlisted XID" when it is not one
// of the common ones.
func XIDMeaning(xid uint64) string {
	if m, ok := xidMeanings[xid]; ok {
		return m
	}
	return "unlisted XID (see NVIDIA's XID catalogue)"
}

// CriticalXID reports whether an XID means the GPU itself is failing
// (every XID but those an application's own fault causes).
func CriticalXID(xid uint64) bool { return !applicationXIDs[xid] }
