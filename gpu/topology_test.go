package gpu

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mpspawn/mpspawn/place"
)

const topoDir = "../testdata/topology"

func loadTopo(t *testing.T, name string) *Topology {
	t.Helper()
	topo, err := LoadTopology(filepath.Join(topoDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

func TestLink(t *testing.T) {
	tests := []struct {
		l         Link
		valid     bool
		nvlinks   int
		proximity int
	}{
		{l: "X", valid: true},
		{l: "NV1", valid: true, nvlinks: 1, proximity: 100},
		{l: "NV12", valid: true, nvlinks: 12, proximity: 1200},
		{l: NVLink(18), valid: true, nvlinks: 18, proximity: 1800},
		{l: "PIX", valid: true, proximity: 50},
		{l: "PXB", valid: true, proximity: 40},
		{l: "PHB", valid: true, proximity: 30},
		{l: "NODE", valid: true, proximity: 20},
		{l: "SYS", valid: true, proximity: 10},
		{l: "NV0"},
		{l: "NV"},
		{l: "NV+2"},
		{l: "NVx"},
		{l: "SOC"},
		{l: "pix"},
		{l: ""},
	}
	for _, tt := range tests {
		t.Run(string(tt.l), func(t *testing.T) {
			if got := tt.l.Valid(); got != tt.valid {
				t.Errorf("Link(%q).Valid() = %v; want %v", tt.l, got, tt.valid)
			}
			if got := tt.l.NVLinks(); got != tt.nvlinks {
				t.Errorf("Link(%q).NVLinks() = %v; want %v", tt.l, got, tt.nvlinks)
			}
			if got := tt.l.Proximity(); got != tt.proximity {
				t.Errorf("Link(%q).Proximity() = %v; want %v", tt.l, got, tt.proximity)
			}
		})
	}
}

// TestSnapshots loads every snapshot, checks its shape, and checks that
// WriteJSON and ReadTopology round-trip it unchanged.
func TestSnapshots(t *testing.T) {
	tests := []struct {
		file  string
		gpus  int
		numa  int
		cpus  string
		links map[[2]int]Link
	}{
		{file: "dgx-a100-nvswitch.json", gpus: 8, numa: 8, cpus: "0-255", links: map[[2]int]Link{{0, 7}: "NV12", {3, 4}: "NV12"}},
		{file: "pcie-4gpu-2numa.json", gpus: 4, numa: 2, cpus: "0-63", links: map[[2]int]Link{{0, 1}: "PIX", {2, 3}: "PHB", {1, 2}: "SYS"}},
		{file: "nvlink-quads-8gpu.json", gpus: 8, numa: 2, cpus: "0-95", links: map[[2]int]Link{{0, 3}: "NV4", {4, 7}: "NV4", {3, 4}: "SYS"}},
		{file: "nvlink-pairs-8gpu.json", gpus: 8, numa: 2, cpus: "0-63", links: map[[2]int]Link{{0, 1}: "NV4", {1, 2}: "NODE", {3, 4}: "SYS"}},
		{file: "a100-mig.json", gpus: 1, numa: 1, cpus: "0-31"},
		{file: "workstation-2gpu.json", gpus: 2, numa: 1, cpus: "0-31", links: map[[2]int]Link{{0, 1}: "PHB"}},
		{file: "cpu-only.json", gpus: 0, numa: 2, cpus: "0-63"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			topo := loadTopo(t, tt.file)
			if len(topo.GPUs) != tt.gpus || len(topo.NUMANodes) != tt.numa || topo.CPUs.String() != tt.cpus {
				t.Errorf("LoadTopology(%q) = %d gpus, %d numa nodes, cpus %q; want %d, %d, %q",
					tt.file, len(topo.GPUs), len(topo.NUMANodes), topo.CPUs, tt.gpus, tt.numa, tt.cpus)
			}
			for ij, want := range tt.links {
				if got := topo.Links[ij[0]][ij[1]]; got != want {
					t.Errorf("LoadTopology(%q).Links[%d][%d] = %q; want %q", tt.file, ij[0], ij[1], got, want)
				}
			}
			var buf bytes.Buffer
			if err := topo.WriteJSON(&buf); err != nil {
				t.Fatal(err)
			}
			orig, err := os.ReadFile(filepath.Join(topoDir, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if buf.String() != string(orig) {
				t.Errorf("WriteJSON(LoadTopology(%q)) differs from the file:\n%s", tt.file, buf.String())
			}
		})
	}
}

// TestWriteJSONEmpty checks the documented empty-list form of a node without
// GPUs, even when the Go value holds nil slices.
func TestWriteJSONEmpty(t *testing.T) {
	var buf bytes.Buffer
	topo := &Topology{Host: "h", GPUs: []Device{{UUID: "GPU-1"}}, Links: [][]Link{{"X"}}}
	if err := topo.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"numa_nodes": []`, `"mig_devices": []`, `"cpus": ""`, `"cpu_affinity": ""`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("WriteJSON(%+v) = %s; want it to contain %s", topo, buf.String(), want)
		}
	}
	buf.Reset()
	if err := (&Topology{}).WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"gpus": []`, `"links": []`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("WriteJSON(empty) = %s; want it to contain %s", buf.String(), want)
		}
	}
	if topo.GPUs[0].MIGDevices != nil {
		t.Errorf("WriteJSON changed its topology: MIGDevices = %v; want nil", topo.GPUs[0].MIGDevices)
	}
}

func TestReadTopologyInvalid(t *testing.T) {
	gpu := func(i int, uuid string) string {
		return `{"index":` + string(rune('0'+i)) + `,"uuid":"` + uuid + `","name":"g","pci_bus_id":"","numa_node":0,"cpu_affinity":"","memory_bytes":0,"mig_devices":[]}`
	}
	two := gpu(0, "GPU-a") + "," + gpu(1, "GPU-b")
	numa := `"numa_nodes":[{"id":0,"cpus":"0-3"}]`
	tests := []struct {
		name, json, want string
	}{
		{"links not square", `{"cpus":"0-3",` + numa + `,"gpus":[` + two + `],"links":[["X","NV1"]]}`, "1 rows for 2 gpus"},
		{"links row short", `{"cpus":"0-3",` + numa + `,"gpus":[` + two + `],"links":[["X","NV1"],["NV1"]]}`, "row 1 has 1 entries"},
		{"links for no gpus", `{"cpus":"0-3",` + numa + `,"gpus":[],"links":[["X"]]}`, "1 rows for 0 gpus"},
		{"diagonal not X", `{"cpus":"0-3",` + numa + `,"gpus":[` + two + `],"links":[["SYS","NV1"],["NV1","X"]]}`, "links[0][0]"},
		{"X off diagonal", `{"cpus":"0-3",` + numa + `,"gpus":[` + two + `],"links":[["X","X"],["X","X"]]}`, "links[0][1]"},
		{"asymmetric", `{"cpus":"0-3",` + numa + `,"gpus":[` + two + `],"links":[["X","NV1"],["SYS","X"]]}`, `links[0][1] is "NV1" but links[1][0] is "SYS"`},
		{"unknown link", `{"cpus":"0-3",` + numa + `,"gpus":[` + two + `],"links":[["X","SOC"],["SOC","X"]]}`, `unknown link kind "SOC"`},
		{"duplicate uuid", `{"cpus":"0-3",` + numa + `,"gpus":[` + gpu(0, "GPU-a") + "," + gpu(1, "GPU-a") + `],"links":[["X","NV1"],["NV1","X"]]}`, `"GPU-a" already used by gpu 0`},
		{"duplicate mig uuid", `{"gpus":[{"index":0,"uuid":"GPU-a","numa_node":-1,"mig_devices":[{"uuid":"MIG-1"},{"uuid":"MIG-1"}]}],"links":[["X"]]}`, `"MIG-1" already used`},
		{"bad uuid", `{"gpus":[` + gpu(0, "a") + `],"links":[["X"]]}`, `does not start with "GPU-"`},
		{"bad index", `{` + numa + `,"gpus":[` + gpu(1, "GPU-a") + `],"links":[["X"]]}`, "index is 1"},
		{"unknown numa", `{"numa_nodes":[{"id":1,"cpus":"0"}],"gpus":[` + gpu(0, "GPU-a") + `],"links":[["X"]]}`, "numa node 0 is not in numa_nodes"},
		{"duplicate numa", `{"numa_nodes":[{"id":1,"cpus":"0"},{"id":1,"cpus":"1"}],"gpus":[],"links":[]}`, "numa node 1 listed twice"},
		{"bad cpus", `{"cpus":"3-1","gpus":[],"links":[]}`, "runs backwards"},
		{"unknown field", `{"gpu":[],"links":[]}`, `unknown field "gpu"`},
		{"not json", `nope`, "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topo, err := ReadTopology(strings.NewReader(tt.json))
			var te *TopologyError
			if !errors.As(err, &te) || !strings.Contains(te.Err.Error(), tt.want) || !errors.Is(err, ErrInvalidTopology) {
				t.Fatalf("ReadTopology(%s) = %v, %v; want a *TopologyError containing %q", tt.json, topo, err, tt.want)
			}
			if want := "gpu: invalid topology: " + te.Err.Error(); te.Path != "" || err.Error() != want {
				t.Errorf("ReadTopology(%s) error = %q (path %q); want %q, no path", tt.json, err, te.Path, want)
			}
		})
	}
}

// TestLoadTopologyErrors checks what a caller can tell apart: a file that
// cannot be read (an *fs.PathError) and one that holds no valid topology (a
// *TopologyError naming the file).
func TestLoadTopologyErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tests := []struct {
		name    string
		path    string
		invalid string // the *TopologyError's Err contains this; "" for a read error
	}{
		{"missing", filepath.Join(dir, "none.json"), ""},
		{"not json", write("bad.json", "nope"), "invalid character"},
		{"inconsistent", write("links.json", `{"gpus":[],"links":[["X"]]}`), "1 rows for 0 gpus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadTopology(tt.path)
			var te *TopologyError
			var pe *fs.PathError
			switch {
			case tt.invalid == "":
				if !errors.As(err, &pe) || !errors.Is(err, os.ErrNotExist) || errors.As(err, &te) || errors.Is(err, ErrInvalidTopology) {
					t.Fatalf("LoadTopology(%q) = %v; want an *fs.PathError for a missing file", tt.path, err)
				}
			case !errors.As(err, &te) || te.Path != tt.path || !strings.Contains(te.Err.Error(), tt.invalid) || !errors.Is(err, ErrInvalidTopology):
				t.Fatalf("LoadTopology(%q) = %v; want a *TopologyError for the file containing %q", tt.path, err, tt.invalid)
			case err.Error() != "gpu: invalid topology "+tt.path+": "+te.Err.Error():
				t.Errorf("LoadTopology(%q) error = %q; want the path once and one prefix", tt.path, err)
			}
		})
	}
}

func TestLocalCPUs(t *testing.T) {
	topo := &Topology{
		CPUs:      mustCPUs(t, "0-7"),
		NUMANodes: []NUMANode{{ID: 0, CPUs: mustCPUs(t, "0-3")}, {ID: 1, CPUs: mustCPUs(t, "4-7")}},
		GPUs: []Device{
			{UUID: "GPU-0", NUMANode: 1, CPUAffinity: mustCPUs(t, "6-7")},
			{Index: 1, UUID: "GPU-1", NUMANode: 1},
			{Index: 2, UUID: "GPU-2", NUMANode: -1},
		},
	}
	tests := []struct {
		gpu         int
		local, numa string
	}{
		{gpu: 0, local: "6-7", numa: "4-7"},
		{gpu: 1, local: "4-7", numa: "4-7"},
		{gpu: 2, local: "0-7", numa: "0-7"},
	}
	for _, tt := range tests {
		if got := topo.LocalCPUs(tt.gpu).String(); got != tt.local {
			t.Errorf("LocalCPUs(%d) = %q; want %q", tt.gpu, got, tt.local)
		}
		if got := topo.NUMACPUs(tt.gpu).String(); got != tt.numa {
			t.Errorf("NUMACPUs(%d) = %q; want %q", tt.gpu, got, tt.numa)
		}
	}
}

func mustCPUs(t *testing.T, s string) place.CPUSet {
	t.Helper()
	c, err := place.ParseCPUList(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func seq(lo, hi int) place.CPUSet {
	var s place.CPUSet
	for c := lo; c <= hi; c++ {
		s = append(s, c)
	}
	return s
}
