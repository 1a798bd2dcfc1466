//go:build linux && cgo

package gpu

import (
	"errors"
	"strconv"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/mpspawn/mpspawn/place"
)

// noDriver is NVML as it behaves where libnvidia-ml.so.1 is missing.
func noDriver() *mock.Interface {
	return &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
}

// TestDiscoverHost reads CPUs and NUMA nodes from a two-socket sysfs with a
// memory-only node, restricted to the CPUs the process may use.
func TestDiscoverHost(t *testing.T) {
	sysfs := writeSysfs(t, map[string]string{
		"devices/system/cpu/online":         "0-15\n",
		"devices/system/node/node0/cpulist": "0-3,8-11\n",
		"devices/system/node/node1/cpulist": "4-7,12-15\n",
		"devices/system/node/node2/cpulist": "\n", // memory only (e.g. HBM)
		"devices/system/node/online":        "0-2\n",
	})
	d, err := Discover(DiscoverOptions{NVML: noDriver(), Sysfs: sysfs, Host: "n1", Allowed: mustCPUs(t, "2-13")})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(d.GPUErr, ErrNoNVML) {
		t.Errorf("GPUErr = %v; want ErrNoNVML", d.GPUErr)
	}
	topo := d.Topology
	if topo.Host != "n1" || topo.CPUs.String() != "2-13" || len(topo.GPUs) != 0 || len(topo.Links) != 0 {
		t.Errorf("host %q cpus %q gpus %d links %d; want n1, 2-13, none", topo.Host, topo.CPUs, len(topo.GPUs), len(topo.Links))
	}
	want := []string{"2-3,8-11", "4-7,12-13", ""}
	if len(topo.NUMANodes) != len(want) {
		t.Fatalf("numa nodes = %v; want %d", topo.NUMANodes, len(want))
	}
	for i, n := range topo.NUMANodes {
		if n.ID != i || n.CPUs.String() != want[i] {
			t.Errorf("numa node %d = %d %q; want %d %q", i, n.ID, n.CPUs, i, want[i])
		}
	}
}

// TestDiscoverNVMLFailing: a driver that is there but fails is reported
// apart from a missing one, and discovery still returns the CPUs.
func TestDiscoverNVMLFailing(t *testing.T) {
	sysfs := writeSysfs(t, map[string]string{"devices/system/cpu/online": "0-3\n"})
	lib := &mock.Interface{
		InitFunc:        func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED },
		ErrorStringFunc: func(r nvml.Return) string { return "Driver Not Loaded" },
	}
	d, err := Discover(DiscoverOptions{NVML: lib, Sysfs: sysfs})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(d.GPUErr, ErrNVMLFailed) || errors.Is(d.GPUErr, ErrNoNVML) {
		t.Errorf("GPUErr = %v; want ErrNVMLFailed only", d.GPUErr)
	}
	if d.Topology.CPUs.String() != "0-3" || len(d.Topology.NUMANodes) != 0 {
		t.Errorf("cpus %q numa %v; want 0-3 and no numa nodes", d.Topology.CPUs, d.Topology.NUMANodes)
	}
}

// TestDiscoverSkipGPUs never touches NVML.
func TestDiscoverSkipGPUs(t *testing.T) {
	lib := &mock.Interface{} // any call panics
	d, err := Discover(DiscoverOptions{NVML: lib, SkipGPUs: true})
	if err != nil {
		t.Fatal(err)
	}
	if d.GPUErr != nil || len(d.Topology.GPUs) != 0 {
		t.Errorf("GPUErr %v, %d gpus; want nil, none", d.GPUErr, len(d.Topology.GPUs))
	}
}

// TestDiscoverThisMachine reads the real sysfs and the real (absent, in CI)
// NVML: never an error, and the CPUs are the ones this process may use.
func TestDiscoverThisMachine(t *testing.T) {
	allowed, err := AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	d, err := Discover(DiscoverOptions{Allowed: allowed})
	if err != nil {
		t.Fatal(err)
	}
	if d.Topology.CPUs.Len() == 0 || !d.Topology.CPUs.Difference(allowed).Equal(place.CPUSet{}) {
		t.Errorf("cpus %q; want a non-empty subset of the allowed %q", d.Topology.CPUs, allowed)
	}
	if len(d.Topology.GPUs) == 0 && d.GPUErr == nil {
		t.Log("NVML answered with zero GPUs")
	}
	t.Logf("gpus: %d, GPUErr: %v", len(d.Topology.GPUs), d.GPUErr)
}

// TestPlanHere plans on this machine as a Go program would for Spawn.
func TestPlanHere(t *testing.T) {
	allowed, err := AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if allowed.Len() < 2 {
		t.Skip("one CPU")
	}
	setup, _, err := PlanHere(PlanOptions{NProc: 2}, VisibilityLocalRank)
	if err != nil {
		t.Fatal(err)
	}
	if len(setup) != 2 {
		t.Fatalf("PlanHere(2 ranks) = %d setups", len(setup))
	}
	if a, b := setup[0].CPUs, setup[1].CPUs; a.Len() == 0 || b.Len() == 0 || a.Intersect(b).Len() > 0 ||
		!a.Union(b).Difference(allowed).Equal(place.CPUSet{}) {
		t.Errorf("ranks bound to %q and %q; want disjoint shares of %q", a, b, allowed)
	}
	if setup[0].Env["OMP_NUM_THREADS"] != strconv.Itoa(setup[0].CPUs.Len()) {
		t.Errorf("OMP_NUM_THREADS = %q for %d cpus", setup[0].Env["OMP_NUM_THREADS"], setup[0].CPUs.Len())
	}
}
