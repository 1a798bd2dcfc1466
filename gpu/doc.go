// Package gpu owns what mpspawn knows about a node's accelerators and CPUs:
// the topology model (GPUs, MIG devices, NUMA nodes, CPU lists and the
// nvidia-smi link matrix between GPUs), its JSON snapshot form, the parsing of
// CUDA_VISIBLE_DEVICES the way CUDA reads it, and the placement of ranks onto
// GPUs and CPUs.
//
// The offline half works on a Topology value, whether read from a snapshot
// (LoadTopology) or filled in by discovery:
//
//	t, err := gpu.LoadTopology("testdata/topology/nvlink-quads-8gpu.json")
//	value, set := os.LookupEnv("CUDA_VISIBLE_DEVICES")
//	vis, warnings, err := gpu.Visible(t, value, set)
//	p, err := gpu.Plan(t, vis, gpu.PlanOptions{NProc: 4})
//
// NVML numbers GPUs in PCI bus order, and CUDA, by default, does not. Whatever
// is handed to a rank therefore names its GPUs by UUID (VisibleSet.Value), so
// that CUDA selects the same physical GPU whatever its device order.
//
// The package never starts processes.
package gpu
