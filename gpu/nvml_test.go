//go:build linux && cgo

package gpu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/mpspawn/mpspawn/place"
)

// The tests build their NVML nodes from go-nvml's mock.Interface and
// mock.Device with the GPU models of mock/gpus. The ready-made dgxa100 and
// dgxh100 servers would serve as well, but they import github.com/google/uuid,
// which this module does not require; and they answer none of the affinity,
// NUMA, NVLink or PCIe calls, which every test here sets itself.

// fakeGPU describes one GPU of a mock NVML node.
type fakeGPU struct {
	cfg   gpus.Config
	busID string // NVML form, "00000000:07:00.0"
	// affinity is the cpulist NVML reports; "" makes GetCpuAffinity
	// answer ERROR_NOT_SUPPORTED.
	affinity string
	// numa is the node NVML reports; -1 makes GetNumaNodeId answer
	// ERROR_NOT_SUPPORTED.
	numa int
	// nvlinks is the far end's bus id of each NVLink; "" is a link that
	// is down. None: GetNvLinkState answers ERROR_NOT_SUPPORTED.
	nvlinks []string
}

// fakeNode describes a mock NVML node.
type fakeNode struct {
	gpus []fakeGPU
	// pcie is GetTopologyCommonAncestor for GPUs i and j; nil means
	// every pair is SYS.
	pcie func(i, j int) (nvml.GpuTopologyLevel, nvml.Return)
	// oldDriver makes LookupSymbol fail, as with a driver that predates
	// GetNumaNodeId and GetNvLinkRemoteDeviceType; calling them panics.
	oldDriver bool
}

// gpuUUID is the UUID the mock gives GPU i.
func gpuUUID(i int) string { return fmt.Sprintf("GPU-%08x-0000-4000-8000-%012x", i, i) }

// pciInfo returns PCI information holding busID as NVML's C string.
func pciInfo(busID string) nvml.PciInfo {
	var p nvml.PciInfo
	for i, c := range []byte(busID) {
		p.BusId[i] = int8(c)
	}
	return p
}

// cpuMask encodes s as NVML's CPU mask of the given number of CPUs.
func cpuMask(s place.CPUSet, cpus int) []uint {
	mask := make([]uint, (cpus+63)/64)
	for _, c := range s {
		if c/64 < len(mask) {
			mask[c/64] |= 1 << (c % 64)
		}
	}
	return mask
}

// build returns the node as an NVML library and its GPUs' handles, which
// tests may change further before use.
func (n fakeNode) build(t *testing.T) (*mock.Interface, []*mock.Device) {
	t.Helper()
	devs := make([]*mock.Device, len(n.gpus))
	index := func(d nvml.Device) int {
		return slices.IndexFunc(devs, func(m *mock.Device) bool { return nvml.Device(m) == d })
	}
	busIDs := map[string]bool{}
	for _, g := range n.gpus {
		busIDs[g.busID] = true
	}
	for i, g := range n.gpus {
		affinity := mustCPUs(t, g.affinity)
		d := &mock.Device{
			GetUUIDFunc:       func() (string, nvml.Return) { return gpuUUID(i), nvml.SUCCESS },
			GetNameFunc:       func() (string, nvml.Return) { return g.cfg.Name, nvml.SUCCESS },
			GetPciInfoFunc:    func() (nvml.PciInfo, nvml.Return) { return pciInfo(g.busID), nvml.SUCCESS },
			GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) { return nvml.Memory{Total: g.cfg.MemoryMB << 20}, nvml.SUCCESS },
			GetMigModeFunc:    func() (int, int, nvml.Return) { return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_DISABLE, nvml.SUCCESS },
			GetCpuAffinityFunc: func(cpus int) ([]uint, nvml.Return) {
				if g.affinity == "" {
					return make([]uint, (cpus+63)/64), nvml.ERROR_NOT_SUPPORTED
				}
				return cpuMask(affinity, cpus), nvml.SUCCESS
			},
			GetNvLinkStateFunc: func(l int) (nvml.EnableState, nvml.Return) {
				switch {
				case len(g.nvlinks) == 0:
					return 0, nvml.ERROR_NOT_SUPPORTED
				case l >= len(g.nvlinks):
					return 0, nvml.ERROR_INVALID_ARGUMENT
				case g.nvlinks[l] == "":
					return nvml.FEATURE_DISABLED, nvml.SUCCESS
				}
				return nvml.FEATURE_ENABLED, nvml.SUCCESS
			},
			GetNvLinkRemotePciInfoFunc: func(l int) (nvml.PciInfo, nvml.Return) { return pciInfo(g.nvlinks[l]), nvml.SUCCESS },
			GetTopologyCommonAncestorFunc: func(other nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
				if n.pcie == nil {
					return nvml.TOPOLOGY_SYSTEM, nvml.SUCCESS
				}
				return n.pcie(i, index(other))
			},
		}
		if !n.oldDriver {
			d.GetNumaNodeIdFunc = func() (int, nvml.Return) {
				if g.numa < 0 {
					return 0, nvml.ERROR_NOT_SUPPORTED
				}
				return g.numa, nvml.SUCCESS
			}
			d.GetNvLinkRemoteDeviceTypeFunc = func(l int) (nvml.IntNvLinkDeviceType, nvml.Return) {
				if busIDs[g.nvlinks[l]] {
					return nvml.NVLINK_DEVICE_TYPE_GPU, nvml.SUCCESS
				}
				return nvml.NVLINK_DEVICE_TYPE_SWITCH, nvml.SUCCESS
			}
		}
		devs[i] = d
	}
	lookup := func(string) error { return nil }
	if n.oldDriver {
		lookup = func(s string) error { return fmt.Errorf("undefined symbol: %s", s) }
	}
	lib := &mock.Interface{
		InitFunc:           func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:       func() nvml.Return { return nvml.SUCCESS },
		ExtensionsFunc:     func() nvml.ExtendedInterface { return &mock.ExtendedInterface{LookupSymbolFunc: lookup} },
		DeviceGetCountFunc: func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devs) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devs[i], nvml.SUCCESS
		},
	}
	return lib, devs
}

// writeSysfs writes files (paths under the root, and their contents) into a
// temporary sysfs root and returns the root.
func writeSysfs(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, s := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// linkMatrix formats links one row a line, for comparison and messages.
func linkMatrix(links [][]Link) string {
	var b strings.Builder
	for _, row := range links {
		for j, l := range row {
			if j > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(string(l))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// dgxA100 is a DGX A100: two 64-core sockets with SMT in NPS4 mode (eight
// NUMA nodes of 16 cores), and eight A100s each with 12 NVLinks, two to
// each of six NVSwitches. Bus ids, CPUs and NUMA nodes are those of
// `nvidia-smi topo -m` on a DGX A100.
func dgxA100() (fakeNode, *Topology) {
	switches := []string{"00000000:C4:00.0", "00000000:C5:00.0", "00000000:C6:00.0", "00000000:C7:00.0", "00000000:C8:00.0", "00000000:C9:00.0"}
	var links []string
	for _, s := range switches {
		links = append(links, s, s)
	}
	busIDs := []string{"00000000:07:00.0", "00000000:0F:00.0", "00000000:47:00.0", "00000000:4E:00.0", "00000000:87:00.0", "00000000:90:00.0", "00000000:B7:00.0", "00000000:BD:00.0"}
	numa := []int{3, 3, 1, 1, 7, 7, 5, 5}
	node := fakeNode{pcie: func(i, j int) (nvml.GpuTopologyLevel, nvml.Return) {
		switch {
		case i/2 == j/2:
			return nvml.TOPOLOGY_MULTIPLE, nvml.SUCCESS
		case i/4 == j/4:
			return nvml.TOPOLOGY_NODE, nvml.SUCCESS
		}
		return nvml.TOPOLOGY_SYSTEM, nvml.SUCCESS
	}}
	topo := &Topology{Host: "dgx-a100", CPUs: seq(0, 255)}
	for id := range 8 {
		cpus := seq(16*id, 16*id+15).Union(seq(128+16*id, 128+16*id+15))
		topo.NUMANodes = append(topo.NUMANodes, NUMANode{ID: id, CPUs: cpus})
	}
	for i, bus := range busIDs {
		node.gpus = append(node.gpus, fakeGPU{
			cfg:      gpus.A100_SXM4_40GB,
			busID:    bus,
			affinity: topo.NUMANodes[numa[i]].CPUs.String(),
			numa:     numa[i],
			nvlinks:  links,
		})
	}
	return node, topo
}

// TestNVMLGPUsDGXA100 reads a whole DGX A100: every GPU's identity, memory,
// CPUs and NUMA node, NV12 between every pair through the NVSwitches, and a
// topology that validates.
func TestNVMLGPUsDGXA100(t *testing.T) {
	node, topo := dgxA100()
	lib, _ := node.build(t)
	got, links, warnings, err := nvmlGPUs(lib, t.TempDir())
	if err != nil {
		t.Fatalf("nvmlGPUs: %v", err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings = %q; want none", warnings)
	}
	if n := len(lib.ShutdownCalls()); n != 1 {
		t.Errorf("Shutdown called %d times; want 1", n)
	}
	want := []struct {
		bus      string
		affinity string
		numa     int
	}{
		{"00000000:07:00.0", "48-63,176-191", 3},
		{"00000000:0F:00.0", "48-63,176-191", 3},
		{"00000000:47:00.0", "16-31,144-159", 1},
		{"00000000:4E:00.0", "16-31,144-159", 1},
		{"00000000:87:00.0", "112-127,240-255", 7},
		{"00000000:90:00.0", "112-127,240-255", 7},
		{"00000000:B7:00.0", "80-95,208-223", 5},
		{"00000000:BD:00.0", "80-95,208-223", 5},
	}
	if len(got) != len(want) {
		t.Fatalf("nvmlGPUs found %d gpus; want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Index != i || g.UUID != gpuUUID(i) || g.Name != "Mock NVIDIA A100-SXM4-40GB" || g.MemoryBytes != 40<<30 {
			t.Errorf("gpu %d = %d %q %q %d bytes; want %d %q %q %d bytes", i, g.Index, g.UUID, g.Name, g.MemoryBytes, i, gpuUUID(i), "Mock NVIDIA A100-SXM4-40GB", uint64(40<<30))
		}
		if g.PCIBusID != w.bus || g.CPUAffinity.String() != w.affinity || g.NUMANode != w.numa {
			t.Errorf("gpu %d = %s cpus %q numa %d; want %s cpus %q numa %d", i, g.PCIBusID, g.CPUAffinity, g.NUMANode, w.bus, w.affinity, w.numa)
		}
		if g.MIGDevices == nil || len(g.MIGDevices) != 0 {
			t.Errorf("gpu %d mig devices = %#v; want empty, not nil", i, g.MIGDevices)
		}
	}
	for i, row := range links {
		for j, l := range row {
			if want := NVLink(12); i != j && l != want || i == j && l != LinkSelf {
				t.Fatalf("links =\n%s; want NV12 between every pair", linkMatrix(links))
			}
		}
	}
	topo.GPUs, topo.Links = got, links
	if err := topo.Validate(); err != nil {
		t.Errorf("Validate() = %v; want nil", err)
	}
}

// TestNVMLLinks checks the link matrix: direct NVLinks counted per pair,
// NVSwitch links, links that are down, and the PCIe kinds, with one warning
// for the pairs whose path NVML cannot tell.
func TestNVMLLinks(t *testing.T) {
	h100 := func(bus string, nvlinks ...string) fakeGPU {
		return fakeGPU{cfg: gpus.H100_SXM5_80GB, busID: bus, affinity: "0-7", numa: 0, nvlinks: nvlinks}
	}
	bus := func(i int) string { return fmt.Sprintf("00000000:%02X:00.0", 0x10*(i+1)) }
	// quad is GPU i of a quad of GPUs fully connected by four NVLinks a
	// pair, with one link down.
	quad := func(i int) fakeGPU {
		var links []string
		for j := i / 4 * 4; j < i/4*4+4; j++ {
			if j != i {
				links = append(links, bus(j), bus(j), bus(j), bus(j))
			}
		}
		return h100(bus(i), append(links, "")...)
	}
	level := func(l nvml.GpuTopologyLevel) func(i, j int) (nvml.GpuTopologyLevel, nvml.Return) {
		return func(i, j int) (nvml.GpuTopologyLevel, nvml.Return) { return l, nvml.SUCCESS }
	}
	tests := []struct {
		name     string
		node     fakeNode
		want     string
		warnings int
	}{{
		name: "h100 nvlink quads",
		node: fakeNode{pcie: level(nvml.TOPOLOGY_SYSTEM), gpus: []fakeGPU{quad(0), quad(1), quad(2), quad(3), quad(4), quad(5), quad(6), quad(7)}},
		want: "X NV4 NV4 NV4 SYS SYS SYS SYS\n" +
			"NV4 X NV4 NV4 SYS SYS SYS SYS\n" +
			"NV4 NV4 X NV4 SYS SYS SYS SYS\n" +
			"NV4 NV4 NV4 X SYS SYS SYS SYS\n" +
			"SYS SYS SYS SYS X NV4 NV4 NV4\n" +
			"SYS SYS SYS SYS NV4 X NV4 NV4\n" +
			"SYS SYS SYS SYS NV4 NV4 X NV4\n" +
			"SYS SYS SYS SYS NV4 NV4 NV4 X\n",
	}, {
		name: "nvlink bridge pair and switch links on one side only",
		node: fakeNode{pcie: level(nvml.TOPOLOGY_HOSTBRIDGE), gpus: []fakeGPU{
			h100(bus(0), bus(1), bus(1), bus(1)),
			h100(bus(1), bus(0), bus(0), bus(0)),
			h100(bus(2), "00000000:C0:00.0", "00000000:C0:00.0"),
		}},
		want: "X NV3 PHB\nNV3 X PHB\nPHB PHB X\n",
	}, {
		name: "switch links on an old driver",
		node: fakeNode{oldDriver: true, gpus: []fakeGPU{
			h100(bus(0), "00000000:C0:00.0", "00000000:C1:00.0", "00000000:C2:00.0"),
			h100(bus(1), "00000000:C0:00.0", "00000000:C1:00.0", ""),
		}},
		want: "X NV2\nNV2 X\n",
	}, {
		name: "pcie kinds",
		node: fakeNode{
			gpus: []fakeGPU{h100(bus(0)), h100(bus(1)), h100(bus(2)), h100(bus(3))},
			pcie: func(i, j int) (nvml.GpuTopologyLevel, nvml.Return) {
				kinds := map[[2]int]nvml.GpuTopologyLevel{
					{0, 1}: nvml.TOPOLOGY_SINGLE, {0, 2}: nvml.TOPOLOGY_MULTIPLE, {0, 3}: nvml.TOPOLOGY_NODE,
					{1, 2}: nvml.TOPOLOGY_INTERNAL, {1, 3}: nvml.TOPOLOGY_HOSTBRIDGE,
				}
				if l, ok := kinds[[2]int{i, j}]; ok {
					return l, nvml.SUCCESS
				}
				return 0, nvml.ERROR_NOT_SUPPORTED
			},
		},
		want:     "X PIX PXB NODE\nPIX X PIX PHB\nPXB PIX X SYS\nNODE PHB SYS X\n",
		warnings: 1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lib, _ := tt.node.build(t)
			_, links, warnings, err := nvmlGPUs(lib, t.TempDir())
			if err != nil {
				t.Fatalf("nvmlGPUs: %v", err)
			}
			if got := linkMatrix(links); got != tt.want {
				t.Errorf("links =\n%s; want\n%s", got, tt.want)
			}
			if len(warnings) != tt.warnings {
				t.Errorf("warnings = %q; want %d", warnings, tt.warnings)
			}
			for _, w := range warnings {
				if strings.HasPrefix(w, "gpu: ") || strings.Contains(w, "\n") {
					t.Errorf("warning %q; want one line with no package prefix", w)
				}
			}
		})
	}
}

// TestNVMLSysfsFallback reads CPU affinity and NUMA node from sysfs where
// NVML cannot tell them, and warns where neither can.
func TestNVMLSysfsFallback(t *testing.T) {
	dev := "bus/pci/devices/0000:b7:00.0/" // NVML's 00000000:B7:00.0
	tests := []struct {
		name      string
		oldDriver bool
		sysfs     map[string]string
		affinity  string
		numa      int
		warnings  int
	}{
		{"from sysfs", false, map[string]string{dev + "local_cpulist": "80-95,208-223\n", dev + "numa_node": "5\n"}, "80-95,208-223", 5, 0},
		{"old driver", true, map[string]string{dev + "local_cpulist": "0-7\n", dev + "numa_node": "0\n"}, "0-7", 0, 0},
		{"numa unknown to the kernel", false, map[string]string{dev + "local_cpulist": "0-7\n", dev + "numa_node": "-1\n"}, "0-7", -1, 0},
		{"empty local_cpulist", false, map[string]string{dev + "local_cpulist": "\n"}, "", -1, 1},
		{"nothing in sysfs", false, nil, "", -1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := fakeNode{oldDriver: tt.oldDriver, gpus: []fakeGPU{{cfg: gpus.A100_SXM4_40GB, busID: "00000000:B7:00.0", numa: -1}}}
			lib, _ := node.build(t)
			got, _, warnings, err := nvmlGPUs(lib, writeSysfs(t, tt.sysfs))
			if err != nil {
				t.Fatalf("nvmlGPUs: %v", err)
			}
			if g := got[0]; g.CPUAffinity.String() != tt.affinity || g.CPUAffinity == nil || g.NUMANode != tt.numa {
				t.Errorf("gpu 0 cpus %#v numa %d; want %q numa %d", g.CPUAffinity, g.NUMANode, tt.affinity, tt.numa)
			}
			if len(warnings) != tt.warnings {
				t.Errorf("warnings = %q; want %d", warnings, tt.warnings)
			}
			for _, w := range warnings {
				if !strings.HasPrefix(w, "gpu 0: cpu affinity unknown") {
					t.Errorf("warning %q; want \"gpu 0: cpu affinity unknown ...\"", w)
				}
			}
		})
	}
}

// migDevice is a MIG device handle with the given UUID and attributes.
func migDevice(uuid string, g, c uint32, memMB uint64) *mock.Device {
	return &mock.Device{
		GetUUIDFunc: func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
		GetAttributesFunc: func() (nvml.DeviceAttributes, nvml.Return) {
			return nvml.DeviceAttributes{GpuInstanceSliceCount: g, ComputeInstanceSliceCount: c, MemorySizeMB: memMB}, nvml.SUCCESS
		},
	}
}

// TestNVMLMIG lists the MIG devices of a GPU in MIG mode, skipping empty
// slots, and none for a GPU without MIG.
func TestNVMLMIG(t *testing.T) {
	node := fakeNode{gpus: []fakeGPU{
		{cfg: gpus.A100_SXM4_40GB, busID: "00000000:07:00.0", affinity: "0-7", numa: 0},
		{cfg: gpus.A100_SXM4_40GB, busID: "00000000:0F:00.0", affinity: "0-7", numa: 0},
	}}
	lib, devs := node.build(t)
	slots := map[int]nvml.Device{
		0: migDevice("MIG-11111111-2222-3333-4444-555555555555", 3, 3, 19968),
		2: migDevice("MIG-66666666-7777-8888-9999-aaaaaaaaaaaa", 1, 1, 4864),
	}
	devs[0].GetMigModeFunc = func() (int, int, nvml.Return) { return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS }
	devs[0].GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	devs[0].GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if d, ok := slots[i]; ok {
			return d, nvml.SUCCESS
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	devs[1].GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }

	got, links, warnings, err := nvmlGPUs(lib, t.TempDir())
	if err != nil {
		t.Fatalf("nvmlGPUs: %v", err)
	}
	want := []MIGDevice{
		{UUID: "MIG-11111111-2222-3333-4444-555555555555", Profile: "3g.20gb"},
		{UUID: "MIG-66666666-7777-8888-9999-aaaaaaaaaaaa", Profile: "1g.5gb"},
	}
	if !slices.Equal(got[0].MIGDevices, want) {
		t.Errorf("gpu 0 mig devices = %v; want %v", got[0].MIGDevices, want)
	}
	if got[1].MIGDevices == nil || len(got[1].MIGDevices) != 0 {
		t.Errorf("gpu 1 mig devices = %#v; want empty, not nil", got[1].MIGDevices)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings = %q; want none", warnings)
	}
	topo := &Topology{CPUs: seq(0, 7), GPUs: got, Links: links}
	if err := topo.Validate(); err != nil {
		t.Errorf("Validate() = %v; want nil", err)
	}
}

// TestMIGProfile names MIG profiles the way nvidia-smi does.
func TestMIGProfile(t *testing.T) {
	tests := []struct {
		g, c  uint32
		memMB uint64
		want  string
	}{
		{1, 1, 4864, "1g.5gb"},
		{2, 2, 9856, "2g.10gb"},
		{3, 3, 19968, "3g.20gb"},
		{7, 7, 40192, "7g.40gb"},
		{1, 1, 9728, "1g.10gb"},
		{3, 1, 19968, "1c.3g.20gb"},
		{1, 1, 1024, "1g.1gb"},
	}
	for _, tt := range tests {
		a := nvml.DeviceAttributes{GpuInstanceSliceCount: tt.g, ComputeInstanceSliceCount: tt.c, MemorySizeMB: tt.memMB}
		if got := migProfile(a); got != tt.want {
			t.Errorf("migProfile(g=%d c=%d %d MiB) = %q; want %q", tt.g, tt.c, tt.memMB, got, tt.want)
		}
	}
}

// TestNVMLErrors checks how failures are reported, and that NVML is shut
// down whenever it was initialised.
func TestNVMLErrors(t *testing.T) {
	two := fakeNode{gpus: []fakeGPU{
		{cfg: gpus.A100_SXM4_40GB, busID: "00000000:07:00.0", affinity: "0-7", numa: 0},
		{cfg: gpus.A100_SXM4_40GB, busID: "00000000:0F:00.0", affinity: "0-7", numa: 0},
	}}
	tests := []struct {
		name      string
		node      fakeNode
		breakIt   func(*mock.Interface, []*mock.Device)
		wantErr   error
		wantOp    string // the *NVMLError's Op
		wantGPU   int    // and GPU
		wantText  []string
		shutdowns int
	}{{
		name: "library not found",
		breakIt: func(lib *mock.Interface, _ []*mock.Device) {
			lib.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }
		},
		wantErr:  ErrNoNVML,
		wantOp:   "init",
		wantGPU:  -1,
		wantText: []string{"gpu: nvml init: libnvidia-ml.so.1 could not be loaded"},
	}, {
		name: "driver not loaded",
		breakIt: func(lib *mock.Interface, _ []*mock.Device) {
			lib.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }
		},
		wantErr:  ErrNVMLFailed,
		wantOp:   "init",
		wantGPU:  -1,
		wantText: []string{"gpu: nvml init: "},
	}, {
		name: "device count fails",
		breakIt: func(lib *mock.Interface, _ []*mock.Device) {
			lib.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
		},
		wantErr:   ErrNVMLFailed,
		wantOp:    "device count",
		wantGPU:   -1,
		wantText:  []string{"gpu: nvml device count: "},
		shutdowns: 1,
	}, {
		name:      "zero gpus",
		shutdowns: 1,
	}, {
		name: "uuid fails",
		node: two,
		breakIt: func(_ *mock.Interface, devs []*mock.Device) {
			devs[1].GetUUIDFunc = func() (string, nvml.Return) { return "", nvml.ERROR_GPU_IS_LOST }
		},
		wantErr:   ErrNVMLFailed,
		wantOp:    "uuid",
		wantGPU:   1,
		wantText:  []string{"gpu: nvml gpu 1: uuid: "},
		shutdowns: 1,
	}, {
		name: "memory fails",
		node: two,
		breakIt: func(_ *mock.Interface, devs []*mock.Device) {
			devs[0].GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_NO_PERMISSION }
		},
		wantErr:   ErrNVMLFailed,
		wantOp:    "memory info",
		wantGPU:   0,
		wantText:  []string{"gpu: nvml gpu 0: memory info: "},
		shutdowns: 1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lib, devs := tt.node.build(t)
			if tt.breakIt != nil {
				tt.breakIt(lib, devs)
			}
			got, links, _, err := nvmlGPUs(lib, t.TempDir())
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("nvmlGPUs() error = %v; want %v", err, tt.wantErr)
			}
			if errors.Is(err, ErrNoNVML) && errors.Is(err, ErrNVMLFailed) {
				t.Errorf("nvmlGPUs() error = %v wraps both ErrNoNVML and ErrNVMLFailed", err)
			}
			var ne *NVMLError
			if err != nil && (!errors.As(err, &ne) || ne.Op != tt.wantOp || ne.GPU != tt.wantGPU || ne.Detail == "") {
				t.Errorf("nvmlGPUs() error = %#v; want an *NVMLError with Op %q, GPU %d and a Detail", err, tt.wantOp, tt.wantGPU)
			}
			for _, s := range tt.wantText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("nvmlGPUs() error = %q; want it to mention %q", err, s)
				}
			}
			if err == nil && (got == nil || links == nil || len(got) != 0 || len(links) != 0) {
				t.Errorf("nvmlGPUs() = %#v, %#v; want empty, not nil", got, links)
			}
			if n := len(lib.ShutdownCalls()); n != tt.shutdowns {
				t.Errorf("Shutdown called %d times; want %d", n, tt.shutdowns)
			}
		})
	}
}

// TestCPUSetFromMask decodes NVML CPU masks, 64 CPUs a word.
func TestCPUSetFromMask(t *testing.T) {
	tests := []struct {
		mask []uint
		want string
	}{
		{nil, ""},
		{[]uint{0, 0}, ""},
		{[]uint{0xffff}, "0-15"},
		{[]uint{1 | 1<<63, 0b11}, "0,63-65"},
		{[]uint{0, 0, 1 << 5}, "133"},
	}
	for _, tt := range tests {
		if got := cpuSetFromMask(tt.mask).String(); got != tt.want {
			t.Errorf("cpuSetFromMask(%#x) = %q; want %q", tt.mask, got, tt.want)
		}
	}
}

// TestSysfsBusID turns NVML bus ids into sysfs device names.
func TestSysfsBusID(t *testing.T) {
	tests := []struct{ in, want string }{
		{"00000000:07:00.0", "0000:07:00.0"},
		{"00000000:B7:00.0", "0000:b7:00.0"},
		{"00010000:01:00.0", "10000:01:00.0"},
		{"0000:af:00.0", "0000:af:00.0"},
		{"no-domain", "no-domain"},
	}
	for _, tt := range tests {
		if got := sysfsBusID(tt.in); got != tt.want {
			t.Errorf("sysfsBusID(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}
