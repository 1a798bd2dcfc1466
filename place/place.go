// Package place holds what a placement gives each rank: the CPUs it is
// bound to (a CPUSet, in the Linux cpulist form) and the variables set in
// its environment (GPU visibility, OMP_NUM_THREADS). It is a leaf: package
// gpu makes placements from NVML's view of the machine, package launcher
// applies them when it starts ranks, and a Go program passes gpu.PlanHere's
// result straight to the Go API's Spawn or Pool, without either side
// importing the other.
package place

// Rank is one rank's placement: the variables to set in its environment
// and the CPUs to bind it to.
type Rank struct {
	// Env holds CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER for a rank with
	// GPUs, OMP_NUM_THREADS for a bound rank (set only where the user left
	// it unset), and MPSPAWN_GPUS and MPSPAWN_CPUS, the rank's own device
	// UUIDs and CPU list.
	Env map[string]string
	// CPUs is the rank's CPU binding; nil when the rank is not bound,
	// including when its share would be every CPU of the node.
	CPUs CPUSet
}
