package gpu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/mpspawn/mpspawn/place"
)

// DiscoverOptions says where Discover looks.
type DiscoverOptions struct {
	// NVML is the NVML library to read GPUs through; nil means the
	// system's libnvidia-ml.so.1, loaded only when Discover runs. Tests
	// pass go-nvml's mocks.
	NVML NVML
	// Sysfs is the sysfs root; "" means "/sys".
	Sysfs string
	// SkipGPUs leaves NVML alone: the Discovery has no GPUs and GPUErr
	// is nil.
	SkipGPUs bool
	// Host is the host name recorded in the snapshot; "" means
	// os.Hostname.
	Host string
	// Allowed, when not nil, restricts the node's CPUs (and every CPU list
	// derived from them) to these, as the CPUs a process may run on
	// (sched_getaffinity, cgroup cpusets) restrict what a launcher can
	// bind ranks to. Snapshots for other machines leave it nil.
	Allowed place.CPUSet
}

// Discovery is what Discover found.
type Discovery struct {
	// Topology is the node. When the GPUs could not be read it still
	// holds the CPUs and NUMA nodes, with no GPUs.
	Topology *Topology
	// GPUErr is why no GPU was read: a *NVMLError, which unwraps to
	// ErrNoNVML when the NVIDIA driver is not installed and to
	// ErrNVMLFailed when NVML is there but failed. It is nil when NVML
	// answered, even with zero GPUs.
	GPUErr error
	// Warnings are one-line notes for people about data that had to be
	// guessed or left out, with no package prefix: the caller says whose
	// they are.
	Warnings []string
}

// Discover reads this node's CPUs and NUMA nodes from sysfs and its GPUs,
// their MIG devices and the links between them from NVML. A missing or
// failing NVML is not an error: the Discovery then has no GPUs and says why
// in GPUErr, so that callers can fall back to CPUs or refuse, as their
// policy wants.
func Discover(opts DiscoverOptions) (*Discovery, error) {
	if opts.Sysfs == "" {
		opts.Sysfs = "/sys"
	}
	t, err := hostTopology(opts.Sysfs)
	if err != nil {
		return nil, err
	}
	t.Host = opts.Host
	if t.Host == "" {
		t.Host, _ = os.Hostname()
	}
	d := &Discovery{Topology: t}
	if opts.SkipGPUs {
		if err := d.finish(opts.Allowed); err != nil {
			return nil, err
		}
		return d, nil
	}
	lib := opts.NVML
	if lib == nil {
		lib = newNVML()
	}
	gpus, links, warnings, err := nvmlGPUs(lib, opts.Sysfs)
	d.Warnings = warnings
	switch {
	case err == nil:
		t.GPUs, t.Links = gpus, links
	case errors.Is(err, ErrNoNVML), errors.Is(err, ErrNVMLFailed):
		d.GPUErr = err
	default:
		return nil, err
	}
	if err := d.finish(opts.Allowed); err != nil {
		return nil, err
	}
	return d, nil
}

// finish restricts the topology to the allowed CPUs and validates it. A
// *TopologyError here means discovery read something inconsistent.
func (d *Discovery) finish(allowed place.CPUSet) error {
	if allowed != nil {
		d.Topology.restrict(allowed)
	}
	return d.Topology.Validate()
}

// hostTopology reads the node's online CPUs and its NUMA nodes from sysfs.
// Where sysfs has no CPU list (not Linux, or sysfs not mounted) the CPUs are
// 0..runtime.NumCPU()-1 and there are no NUMA nodes.
func hostTopology(sysfs string) (*Topology, error) {
	t := &Topology{GPUs: []Device{}, Links: [][]Link{}, NUMANodes: []NUMANode{}}
	cpus, err := readCPUList(filepath.Join(sysfs, "devices/system/cpu/online"))
	switch {
	case errors.Is(err, os.ErrNotExist):
		cpus = place.CPUSet{}
		for i := range runtime.NumCPU() {
			cpus = append(cpus, i)
		}
	case err != nil:
		return nil, fmt.Errorf("gpu: discover: %w", err)
	}
	t.CPUs = cpus
	dirs, _ := filepath.Glob(filepath.Join(sysfs, "devices/system/node/node[0-9]*"))
	for _, dir := range dirs {
		id, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "node"))
		if err != nil {
			continue
		}
		cpus, err := readCPUList(filepath.Join(dir, "cpulist"))
		if err != nil {
			return nil, fmt.Errorf("gpu: discover: numa node %d: %w", id, err)
		}
		t.NUMANodes = append(t.NUMANodes, NUMANode{ID: id, CPUs: cpus.Intersect(t.CPUs)})
	}
	slices.SortFunc(t.NUMANodes, func(a, b NUMANode) int { return a.ID - b.ID })
	return t, nil
}

// readCPUList reads a sysfs file in cpulist form.
func readCPUList(path string) (place.CPUSet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := place.ParseCPUList(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// restrict keeps only the allowed CPUs in every CPU list of t.
func (t *Topology) restrict(allowed place.CPUSet) {
	t.CPUs = t.CPUs.Intersect(allowed)
	for i := range t.NUMANodes {
		t.NUMANodes[i].CPUs = t.NUMANodes[i].CPUs.Intersect(allowed)
	}
	for i := range t.GPUs {
		t.GPUs[i].CPUAffinity = t.GPUs[i].CPUAffinity.Intersect(allowed)
	}
}
