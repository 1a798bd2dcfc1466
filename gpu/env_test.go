package gpu

import (
	"strings"
	"testing"

	"github.com/mpspawn/mpspawn/place"
)

// TestSetupVisibility checks what each rank is shown: under the default, the
// job's GPUs in local-rank order so that entry LOCAL_RANK is the rank's own
// (torch.cuda.set_device(LOCAL_RANK) keeps working); under isolate, only its
// own.
func TestSetupVisibility(t *testing.T) {
	topo := loadTopo(t, "nvlink-quads-8gpu.json")
	vis, _, err := Visible(topo, "0,4,5", true)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Plan(topo, vis, PlanOptions{NProc: 2})
	if err != nil {
		t.Fatal(err)
	}
	u4, u5 := topo.GPUs[4].UUID, topo.GPUs[5].UUID

	setup, notes := p.Setup(topo, VisibilityLocalRank)
	if len(notes) != 0 {
		t.Errorf("notes = %q; want none", notes)
	}
	for lr, s := range setup {
		list := strings.Split(s.Env["CUDA_VISIBLE_DEVICES"], ",")
		if want := []string{u4, u5}; strings.Join(list, ",") != strings.Join(want, ",") {
			t.Errorf("rank %d CUDA_VISIBLE_DEVICES = %q; want %q", lr, list, want)
		}
		// What set_device(LOCAL_RANK) selects is the rank's own GPU.
		if own := p.Ranks[lr].Devices[0].UUID; list[lr] != own || s.Env["MPSPAWN_GPUS"] != own {
			t.Errorf("rank %d: entry %d is %s, MPSPAWN_GPUS %s; want its own gpu %s", lr, lr, list[lr], s.Env["MPSPAWN_GPUS"], own)
		}
		if s.Env["CUDA_DEVICE_ORDER"] != "PCI_BUS_ID" {
			t.Errorf("rank %d CUDA_DEVICE_ORDER = %q; want PCI_BUS_ID", lr, s.Env["CUDA_DEVICE_ORDER"])
		}
	}

	setup, _ = p.Setup(topo, VisibilityIsolate)
	for lr, want := range []string{u4, u5} {
		if got := setup[lr].Env["CUDA_VISIBLE_DEVICES"]; got != want {
			t.Errorf("isolate: rank %d CUDA_VISIBLE_DEVICES = %q; want %q", lr, got, want)
		}
	}
}

// TestSetupForcedIsolate: several GPUs per rank, or MIG devices, cannot be
// addressed by LOCAL_RANK; each rank is isolated, with a note.
func TestSetupForcedIsolate(t *testing.T) {
	tests := []struct {
		file string
		opts PlanOptions
		note string
		want func(*Topology) []string
	}{
		{file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 2, GPUsPerRank: 2}, note: "several GPUs",
			want: func(t *Topology) []string {
				return []string{t.GPUs[0].UUID + "," + t.GPUs[1].UUID, t.GPUs[2].UUID + "," + t.GPUs[3].UUID}
			}},
		{file: "a100-mig.json", opts: PlanOptions{NProc: 2}, note: "MIG",
			want: func(t *Topology) []string {
				return []string{t.GPUs[0].MIGDevices[0].UUID, t.GPUs[0].MIGDevices[1].UUID}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			topo := loadTopo(t, tt.file)
			vis, _, _ := Visible(topo, "", false)
			p, err := Plan(topo, vis, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			setup, notes := p.Setup(topo, VisibilityLocalRank)
			if len(notes) != 1 || !strings.Contains(notes[0], tt.note) {
				t.Errorf("notes = %q; want one about %s", notes, tt.note)
			}
			for lr, want := range tt.want(topo) {
				if got := setup[lr].Env["CUDA_VISIBLE_DEVICES"]; got != want {
					t.Errorf("rank %d CUDA_VISIBLE_DEVICES = %q; want %q", lr, got, want)
				}
			}
		})
	}
}

// TestSetupCPUs checks the binding handed to the launcher and
// OMP_NUM_THREADS: a rank's CPU count over the ranks that share its CPUs; no
// binding at all where a rank's share is the whole node.
func TestSetupCPUs(t *testing.T) {
	tests := []struct {
		name string
		file string
		opts PlanOptions
		cpus []string // per rank; "" = not bound
		omp  []string // per rank; "" = not set
	}{
		{name: "quads exclusive", file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 2},
			cpus: []string{"0-11,48-59", "12-23,60-71"}, omp: []string{"24", "24"}},
		{name: "quads numa", file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 4, CPUBind: CPUBindNUMA},
			cpus: []string{"0-23,48-71", "0-23,48-71", "0-23,48-71", "0-23,48-71"}, omp: []string{"12", "12", "12", "12"}},
		{name: "quads none", file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 2, CPUBind: CPUBindNone},
			cpus: []string{"", ""}, omp: []string{"", ""}},
		{name: "cpu 1 rank is the whole node", file: "workstation-2gpu.json", opts: PlanOptions{NProc: 1, GPUsPerRank: 2},
			cpus: []string{""}, omp: []string{""}},
		{name: "cpu-only 4 ranks", file: "cpu-only.json", opts: PlanOptions{NProc: 4},
			cpus: nil, omp: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topo := loadTopo(t, tt.file)
			vis, _, _ := Visible(topo, "", false)
			if tt.cpus == nil { // a CPU-only plan: expect even, disjoint shares
				vis = nil
			}
			p, err := Plan(topo, vis, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			setup, _ := p.Setup(topo, VisibilityLocalRank)
			if tt.cpus == nil {
				seen := place.CPUSet{}
				for lr, s := range setup {
					if s.CPUs.Len() != topo.CPUs.Len()/len(setup) || s.CPUs.Intersect(seen).Len() > 0 {
						t.Errorf("rank %d cpus %q: want a disjoint quarter of %q", lr, s.CPUs, topo.CPUs)
					}
					if _, ok := s.Env["CUDA_VISIBLE_DEVICES"]; ok {
						t.Errorf("rank %d: CUDA_VISIBLE_DEVICES set in a CPU-only plan", lr)
					}
					seen = seen.Union(s.CPUs)
				}
				return
			}
			for lr, s := range setup {
				if s.CPUs.String() != tt.cpus[lr] || s.Env["OMP_NUM_THREADS"] != tt.omp[lr] || s.Env["MPSPAWN_CPUS"] != tt.cpus[lr] {
					t.Errorf("rank %d: cpus %q OMP_NUM_THREADS %q MPSPAWN_CPUS %q; want %q %q %q", lr,
						s.CPUs, s.Env["OMP_NUM_THREADS"], s.Env["MPSPAWN_CPUS"], tt.cpus[lr], tt.omp[lr], tt.cpus[lr])
				}
				if tt.cpus[lr] == "" && s.CPUs != nil {
					t.Errorf("rank %d: CPUs %v; want nil (not bound)", lr, s.CPUs)
				}
			}
		})
	}
}

func TestParseVisibility(t *testing.T) {
	for in, want := range map[string]Visibility{"": VisibilityLocalRank, "local-rank": VisibilityLocalRank, "isolate": VisibilityIsolate} {
		if got, err := ParseVisibility(in); got != want || err != nil {
			t.Errorf("ParseVisibility(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseVisibility("all"); err == nil {
		t.Error("ParseVisibility(all) succeeded")
	}
}
