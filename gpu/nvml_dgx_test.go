//go:build linux && cgo

package gpu

import (
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// fillDGX sets the calls go-nvml's DGX server mocks leave out or leave
// empty (CPU affinity, NUMA node, NVLink state and peers, PCIe common
// ancestor, the PCI bus id in GetPciInfo) on every device of s: GPU i sits on NUMA node numa[i] with that node's CPUs, and nvlink
// (i, l) returns the bus id link l of GPU i reaches, or "" for a link that
// is down.
func fillDGX(t *testing.T, s *server.Server, nodes []NUMANode, numa []int, nvlink func(i, l int) string, pcie func(i, j int) nvml.GpuTopologyLevel) {
	t.Helper()
	index := map[nvml.Device]int{}
	for i, h := range s.Devices {
		index[h] = i
	}
	for i, h := range s.Devices {
		d := h.(*server.Device)
		d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) { return pciInfo(nvmlBusID(d)), nvml.SUCCESS }
		d.GetCpuAffinityFunc = func(n int) ([]uint, nvml.Return) {
			return cpuMask(nodes[numa[i]].CPUs, n), nvml.SUCCESS
		}
		d.GetNumaNodeIdFunc = func() (int, nvml.Return) { return numa[i], nvml.SUCCESS }
		d.GetNvLinkStateFunc = func(l int) (nvml.EnableState, nvml.Return) {
			if l >= nvml.NVLINK_MAX_LINKS {
				return 0, nvml.ERROR_INVALID_ARGUMENT
			}
			if nvlink(i, l) == "" {
				return nvml.FEATURE_DISABLED, nvml.SUCCESS
			}
			return nvml.FEATURE_ENABLED, nvml.SUCCESS
		}
		d.GetNvLinkRemotePciInfoFunc = func(l int) (nvml.PciInfo, nvml.Return) {
			return pciInfo(nvlink(i, l)), nvml.SUCCESS
		}
		d.GetNvLinkRemoteDeviceTypeFunc = func(l int) (nvml.IntNvLinkDeviceType, nvml.Return) {
			for _, o := range s.Devices {
				if nvmlBusID(o.(*server.Device)) == nvlink(i, l) {
					return nvml.NVLINK_DEVICE_TYPE_GPU, nvml.SUCCESS
				}
			}
			return nvml.NVLINK_DEVICE_TYPE_SWITCH, nvml.SUCCESS
		}
		d.GetTopologyCommonAncestorFunc = func(o nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
			return pcie(i, index[o]), nvml.SUCCESS
		}
	}
}

// nvmlBusID is the mock device's PCI bus id in NVML's form, with the
// 8-digit domain ("00000000:03:00.0"); the mock keeps sysfs's 4-digit form.
func nvmlBusID(d *server.Device) string { return "0000" + d.PciBusID }

// TestDiscoverDGXMocks runs discovery end to end on go-nvml's DGX A100 and
// DGX H100 mocks, with a fake sysfs for the host: an NVSwitch node reads as
// NV12 everywhere, and an H100 node cabled as two directly linked quads
// reads as NV4 inside a quad and SYS between them; both snapshots validate
// and plan 4 ranks onto one quad-local set of GPUs and CPUs.
func TestDiscoverDGXMocks(t *testing.T) {
	sysfs := writeSysfs(t, map[string]string{
		"devices/system/cpu/online":         "0-31",
		"devices/system/node/node0/cpulist": "0-15",
		"devices/system/node/node1/cpulist": "16-31",
	})
	nodes := []NUMANode{{0, seq(0, 15)}, {1, seq(16, 31)}}
	numa := []int{0, 0, 0, 0, 1, 1, 1, 1}
	sameSocket := func(i, j int) nvml.GpuTopologyLevel {
		if i/4 == j/4 {
			return nvml.TOPOLOGY_NODE
		}
		return nvml.TOPOLOGY_SYSTEM
	}
	tests := []struct {
		name   string
		server *server.Server
		nvlink func(s *server.Server) func(i, l int) string
		want   func(i, j int) Link
		model  string
	}{
		{
			name: "dgxa100 nvswitch", server: dgxa100.New(), model: "A100",
			nvlink: func(*server.Server) func(i, l int) string {
				return func(i, l int) string {
					if l >= 12 {
						return ""
					}
					return "00000000:C" + string(rune('4'+l/2)) + ":00.0" // two links to each of 6 switches
				}
			},
			want: func(i, j int) Link { return NVLink(12) },
		},
		{
			name: "dgxh100 quads", server: dgxh100.New(), model: "H100",
			nvlink: func(s *server.Server) func(i, l int) string {
				return func(i, l int) string {
					// Links 0-5 of GPU i reach the other three GPUs of its quad, two each.
					if l >= 6 {
						return ""
					}
					q := i / 4 * 4
					peers := []int{}
					for p := q; p < q+4; p++ {
						if p != i {
							peers = append(peers, p)
						}
					}
					return nvmlBusID(s.Devices[peers[l/2]].(*server.Device))
				}
			},
			want: func(i, j int) Link {
				if i/4 == j/4 {
					return NVLink(2)
				}
				return LinkSYS
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fillDGX(t, tt.server, nodes, numa, tt.nvlink(tt.server), sameSocket)
			d, err := Discover(DiscoverOptions{NVML: tt.server, Sysfs: sysfs, Host: "dgx"})
			if err != nil {
				t.Fatal(err)
			}
			if d.GPUErr != nil || len(d.Warnings) != 0 {
				t.Fatalf("GPUErr %v, warnings %q; want none", d.GPUErr, d.Warnings)
			}
			topo := d.Topology
			if len(topo.GPUs) != 8 {
				t.Fatalf("%d gpus; want 8", len(topo.GPUs))
			}
			for i, g := range topo.GPUs {
				dev := tt.server.Devices[i].(*server.Device)
				if g.UUID != dev.UUID || g.PCIBusID != nvmlBusID(dev) || !strings.Contains(g.Name, tt.model) || g.MemoryBytes == 0 {
					t.Errorf("gpu %d = %s %s %q %d; want %s %s, an %s with memory", i, g.UUID, g.PCIBusID, g.Name, g.MemoryBytes, dev.UUID, dev.PciBusID, tt.model)
				}
				if g.NUMANode != numa[i] || !g.CPUAffinity.Equal(nodes[numa[i]].CPUs) {
					t.Errorf("gpu %d numa %d cpus %q; want %d %q", i, g.NUMANode, g.CPUAffinity, numa[i], nodes[numa[i]].CPUs)
				}
				for j := range topo.GPUs {
					want := tt.want(i, j)
					if i == j {
						want = LinkSelf
					}
					if topo.Links[i][j] != want {
						t.Errorf("links[%d][%d] = %s; want %s", i, j, topo.Links[i][j], want)
					}
				}
			}
			vis, _, err := Visible(topo, "", false)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Plan(topo, vis, PlanOptions{NProc: 4})
			if err != nil {
				t.Fatal(err)
			}
			for r, rp := range p.Ranks {
				if g := rp.Devices[0].GPU; g != r || !rp.CPUs.Equal(seq(4*r, 4*r+3)) {
					t.Errorf("rank %d on gpu %d cpus %q; want gpu %d cpus %d-%d", r, g, rp.CPUs, r, 4*r, 4*r+3)
				}
			}
		})
	}
}
