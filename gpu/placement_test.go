package gpu

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/mpspawn/mpspawn/place"
)

// rankView is one rank of a plan in a form golden tables can spell out:
// devices as in names, CPUs in cpulist form.
type rankView struct {
	devs string
	cpus string
}

func view(p *Placement) []rankView {
	out := make([]rankView, len(p.Ranks))
	for i, r := range p.Ranks {
		out[i] = rankView{devs: strings.Join(names(r.Devices), "+"), cpus: r.CPUs.String()}
	}
	return out
}

// TestPlanGolden is the golden plan table: for each snapshot, visibility and
// options, the exact devices and CPUs of every rank.
func TestPlanGolden(t *testing.T) {
	type rv = rankView
	tests := []struct {
		name  string
		file  string
		cvd   *string // CUDA_VISIBLE_DEVICES; nil: unset
		opts  PlanOptions
		ranks []rankView
		warns int
	}{
		// Acceptance: 4 ranks land on one NVLink quad, with CPUs local to
		// their GPUs shared out without overlap.
		{name: "quads 4 ranks", file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 4},
			ranks: []rv{{"0", "0-5,48-53"}, {"1", "6-11,54-59"}, {"2", "12-17,60-65"}, {"3", "18-23,66-71"}}},
		// Acceptance: CUDA_VISIBLE_DEVICES=0,4,5 and 2 ranks: the NVLinked pair 4,5.
		{name: "quads cvd 0,4,5", file: "nvlink-quads-8gpu.json", cvd: ptr("0,4,5"), opts: PlanOptions{NProc: 2},
			ranks: []rv{{"4", "24-35,72-83"}, {"5", "36-47,84-95"}}},
		{name: "quads all", file: "nvlink-quads-8gpu.json",
			ranks: []rv{{"0", "0-5,48-53"}, {"1", "6-11,54-59"}, {"2", "12-17,60-65"}, {"3", "18-23,66-71"},
				{"4", "24-29,72-77"}, {"5", "30-35,78-83"}, {"6", "36-41,84-89"}, {"7", "42-47,90-95"}}},
		{name: "quads 2 per rank", file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 2, GPUsPerRank: 2},
			ranks: []rv{{"0+1", "0-11,48-59"}, {"2+3", "12-23,60-71"}}},
		{name: "quads 1 rank 4 gpus", file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 1, GPUsPerRank: 4},
			ranks: []rv{{"0+1+2+3", "0-23,48-71"}}},
		{name: "quads numa bind", file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 2, CPUBind: CPUBindNUMA},
			ranks: []rv{{"0", "0-23,48-71"}, {"1", "0-23,48-71"}}},
		{name: "quads no bind", file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 2, CPUBind: CPUBindNone},
			ranks: []rv{{"0", ""}, {"1", ""}}},
		{name: "quads cvd 5,0 uuid order", file: "nvlink-quads-8gpu.json", cvd: ptr("5,0"), opts: PlanOptions{NProc: 1},
			ranks: []rv{{"5", "24-47,72-95"}}},
		{name: "pairs 2 ranks", file: "nvlink-pairs-8gpu.json", opts: PlanOptions{NProc: 2},
			ranks: []rv{{"0", "0-7,32-39"}, {"1", "8-15,40-47"}}},
		{name: "pairs 4 ranks one numa", file: "nvlink-pairs-8gpu.json", opts: PlanOptions{NProc: 4},
			ranks: []rv{{"0", "0-3,32-35"}, {"1", "4-7,36-39"}, {"2", "8-11,40-43"}, {"3", "12-15,44-47"}}},
		{name: "pairs cvd 1,2,3 2 ranks", file: "nvlink-pairs-8gpu.json", cvd: ptr("1,2,3"), opts: PlanOptions{NProc: 2},
			ranks: []rv{{"2", "0-7,32-39"}, {"3", "8-15,40-47"}}},
		{name: "pairs cvd 3,4,2 ordered by link", file: "nvlink-pairs-8gpu.json", cvd: ptr("3,4,2"),
			ranks: []rv{{"3", "0-7,32-39"}, {"2", "8-15,40-47"}, {"4", "16-31,48-63"}}},
		{name: "pairs 2 per rank", file: "nvlink-pairs-8gpu.json", opts: PlanOptions{NProc: 2, GPUsPerRank: 2},
			ranks: []rv{{"0+1", "0-7,32-39"}, {"2+3", "8-15,40-47"}}},
		{name: "dgx 2 ranks one numa", file: "dgx-a100-nvswitch.json", opts: PlanOptions{NProc: 2},
			ranks: []rv{{"0", "48-55,176-183"}, {"1", "56-63,184-191"}}},
		{name: "dgx 4 ranks", file: "dgx-a100-nvswitch.json", opts: PlanOptions{NProc: 4},
			ranks: []rv{{"0", "48-55,176-183"}, {"1", "56-63,184-191"}, {"2", "16-23,144-151"}, {"3", "24-31,152-159"}}},
		{name: "dgx cvd 2,4,3 2 ranks", file: "dgx-a100-nvswitch.json", cvd: ptr("2,4,3"), opts: PlanOptions{NProc: 2},
			ranks: []rv{{"2", "16-23,144-151"}, {"3", "24-31,152-159"}}},
		{name: "pcie 2 ranks PIX pair", file: "pcie-4gpu-2numa.json", opts: PlanOptions{NProc: 2},
			ranks: []rv{{"0", "0-7,32-39"}, {"1", "8-15,40-47"}}},
		{name: "pcie cvd 1,2,3 2 ranks PHB pair", file: "pcie-4gpu-2numa.json", cvd: ptr("1,2,3"), opts: PlanOptions{NProc: 2},
			ranks: []rv{{"2", "16-23,48-55"}, {"3", "24-31,56-63"}}},
		{name: "pcie all", file: "pcie-4gpu-2numa.json",
			ranks: []rv{{"0", "0-7,32-39"}, {"1", "8-15,40-47"}, {"2", "16-23,48-55"}, {"3", "24-31,56-63"}}},
		{name: "workstation", file: "workstation-2gpu.json",
			ranks: []rv{{"0", "0-15"}, {"1", "16-31"}}},
		{name: "mig slices", file: "a100-mig.json",
			ranks: []rv{{"0/0", "0-7"}, {"0/1", "8-15"}, {"0/2", "16-23"}, {"0/3", "24-31"}}},
		{name: "mig 2 ranks", file: "a100-mig.json", opts: PlanOptions{NProc: 2},
			ranks: []rv{{"0/0", "0-15"}, {"0/1", "16-31"}}},
		{name: "cvd empty means cpu plan", file: "workstation-2gpu.json", cvd: ptr(""), opts: PlanOptions{NProc: 2},
			ranks: []rv{{"", "0-15"}, {"", "16-31"}}},
		{name: "cpu only 4 ranks", file: "cpu-only.json", opts: PlanOptions{NProc: 4},
			ranks: []rv{{"", "0-7,32-39"}, {"", "8-15,40-47"}, {"", "16-23,48-55"}, {"", "24-31,56-63"}}},
		{name: "cpu only 3 ranks", file: "cpu-only.json", opts: PlanOptions{NProc: 3},
			ranks: []rv{{"", "0-7,32-39"}, {"", "8-15,40-47"}, {"", "16-31,48-63"}}},
		{name: "cpu only 1 rank", file: "cpu-only.json", opts: PlanOptions{NProc: 1},
			ranks: []rv{{"", "0-15,32-47"}}},
		{name: "cpu only numa", file: "cpu-only.json", opts: PlanOptions{NProc: 3, CPUBind: CPUBindNUMA},
			ranks: []rv{{"", "0-15,32-47"}, {"", "0-15,32-47"}, {"", "16-31,48-63"}}},
		{name: "cpu only none", file: "cpu-only.json", opts: PlanOptions{NProc: 2, CPUBind: CPUBindNone},
			ranks: []rv{{"", ""}, {"", ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topo, p, err := planFile(t, tt.file, tt.cvd, tt.opts)
			if err != nil {
				t.Fatalf("Plan(%s, %+v) = %v", tt.file, tt.opts, err)
			}
			if got := view(p); !slices.Equal(got, tt.ranks) {
				t.Errorf("Plan(%s, %+v) = %v; want %v", tt.file, tt.opts, got, tt.ranks)
			}
			if len(p.Warnings) != tt.warns {
				t.Errorf("Plan(%s, %+v) warnings = %q; want %d", tt.file, tt.opts, p.Warnings, tt.warns)
			}
			checkPlan(t, topo, p, tt.opts)
		})
	}
}

func ptr(s string) *string { return &s }

// planFile plans on the snapshot testdata file with CUDA_VISIBLE_DEVICES
// *cvd (nil: unset), returning the snapshot too.
func planFile(t *testing.T, file string, cvd *string, opts PlanOptions) (*Topology, *Placement, error) {
	t.Helper()
	topo := loadTopo(t, file)
	vis, _, err := Visible(topo, deref(cvd), cvd != nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Plan(topo, vis, opts)
	return topo, p, err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// checkPlan checks what every plan must hold: local ranks in order, no device
// used twice, and, for exclusive binding without warnings, no CPU used twice
// and every rank's CPUs local to its GPUs.
func checkPlan(t *testing.T, topo *Topology, p *Placement, opts PlanOptions) {
	t.Helper()
	devs, cpus := map[string]bool{}, map[int]bool{}
	for i, r := range p.Ranks {
		if r.LocalRank != i {
			t.Errorf("rank %d has LocalRank %d", i, r.LocalRank)
		}
		local := place.CPUSet{}
		for _, d := range r.Devices {
			if devs[d.UUID] {
				t.Errorf("device %s placed twice", d.UUID)
			}
			devs[d.UUID] = true
			local = local.Union(topo.LocalCPUs(d.GPU))
		}
		if opts.CPUBind != "" && opts.CPUBind != CPUBindExclusive || len(p.Warnings) > 0 {
			continue
		}
		if len(r.Devices) > 0 && !r.CPUs.Difference(local).Equal(place.CPUSet{}) {
			t.Errorf("rank %d cpus %q not local to its gpus (%q)", i, r.CPUs, local)
		}
		for _, c := range r.CPUs {
			if cpus[c] {
				t.Errorf("cpu %d bound to two ranks", c)
			}
			cpus[c] = true
		}
	}
}

func TestPlanErrors(t *testing.T) {
	tests := []struct {
		name string
		file string
		cvd  *string
		opts PlanOptions
		want string
	}{
		{name: "negative nproc", file: "workstation-2gpu.json", opts: PlanOptions{NProc: -1}, want: "-1 ranks"},
		{name: "negative gpus per rank", file: "workstation-2gpu.json", opts: PlanOptions{GPUsPerRank: -2}, want: "-2 gpus per rank"},
		{name: "bad cpu bind", file: "workstation-2gpu.json", opts: PlanOptions{CPUBind: "socket"}, want: `cpu bind "socket"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, p, err := planFile(t, tt.file, tt.cvd, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Plan(%s, %+v) = %v, %v; want an error containing %q", tt.file, tt.opts, p, err, tt.want)
			}
		})
	}
	if _, err := Plan(&Topology{}, nil, PlanOptions{}); err == nil {
		t.Errorf("Plan(empty topology, no ranks) = nil error; want one")
	}
}

// TestTooFewGPUsError checks that errors.As gives the numbers behind a
// refusal, for a caller to word its own message.
func TestTooFewGPUsError(t *testing.T) {
	tests := []struct {
		name string
		file string
		cvd  *string
		opts PlanOptions
		want TooFewGPUsError
	}{
		{name: "too many ranks", file: "nvlink-quads-8gpu.json", opts: PlanOptions{NProc: 9}, want: TooFewGPUsError{Ranks: 9, GPUsPerRank: 1, Want: 9, Have: 8}},
		{name: "too many per rank", file: "pcie-4gpu-2numa.json", opts: PlanOptions{NProc: 3, GPUsPerRank: 2}, want: TooFewGPUsError{Ranks: 3, GPUsPerRank: 2, Want: 6, Have: 4}},
		{name: "restricted by cvd", file: "nvlink-quads-8gpu.json", cvd: ptr("0,4,5"), opts: PlanOptions{NProc: 4}, want: TooFewGPUsError{Ranks: 4, GPUsPerRank: 1, Want: 4, Have: 3}},
		{name: "auto with too few for a rank", file: "workstation-2gpu.json", opts: PlanOptions{GPUsPerRank: 4}, want: TooFewGPUsError{Ranks: 1, GPUsPerRank: 4, Want: 4, Have: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := planFile(t, tt.file, tt.cvd, tt.opts)
			var e *TooFewGPUsError
			if !errors.As(err, &e) || *e != tt.want || !errors.Is(err, ErrTooFewGPUs) {
				t.Fatalf("Plan(%s, %+v) = %v; want %+v", tt.file, tt.opts, err, tt.want)
			}
			want := fmt.Sprintf("gpu: plan: %d ranks × %d gpus per rank need %d gpus; %d usable", tt.want.Ranks, tt.want.GPUsPerRank, tt.want.Want, tt.want.Have)
			if err.Error() != want {
				t.Errorf("Plan(%s, %+v) error = %q; want %q", tt.file, tt.opts, err, want)
			}
		})
	}
}

// TestPlanSharedCPUs checks the fallback when there are fewer CPUs than
// ranks: the ranks share them, and a warning says so.
func TestPlanSharedCPUs(t *testing.T) {
	mig := loadTopo(t, "a100-mig.json")
	mig.CPUs = mustCPUs(t, "0-2")
	mig.NUMANodes[0].CPUs = mig.CPUs
	mig.GPUs[0].CPUAffinity = mig.CPUs
	cpu := loadTopo(t, "cpu-only.json")
	tests := []struct {
		name  string
		topo  *Topology
		nproc int
		want  []rankView
	}{
		{name: "4 mig ranks on 3 cpus", topo: mig, nproc: 4, want: []rankView{{"0/0", "0-2"}, {"0/1", "0-2"}, {"0/2", "0-2"}, {"0/3", "0-2"}}},
		{name: "40 cpu ranks on 2x32 cpus", topo: cpu, nproc: 80, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vis, _, _ := Visible(tt.topo, "", false)
			p, err := Plan(tt.topo, vis, PlanOptions{NProc: tt.nproc})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Ranks) != tt.nproc || len(p.Warnings) == 0 {
				t.Fatalf("Plan(%d ranks) = %d ranks, warnings %q; want %d ranks and a warning", tt.nproc, len(p.Ranks), p.Warnings, tt.nproc)
			}
			if tt.want != nil && !slices.Equal(view(p), tt.want) {
				t.Errorf("Plan(%d ranks) = %v; want %v", tt.nproc, view(p), tt.want)
			}
		})
	}
}

// TestPlanDefaults checks NProc 0: one rank per usable GPU group, or per CPU.
func TestPlanDefaults(t *testing.T) {
	tests := []struct {
		file  string
		opts  PlanOptions
		ranks int
	}{
		{file: "dgx-a100-nvswitch.json", ranks: 8},
		{file: "dgx-a100-nvswitch.json", opts: PlanOptions{GPUsPerRank: 3}, ranks: 2},
		{file: "a100-mig.json", ranks: 4},
		{file: "cpu-only.json", ranks: 64},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.file, tt.opts.GPUsPerRank), func(t *testing.T) {
			topo := loadTopo(t, tt.file)
			vis, _, _ := Visible(topo, "", false)
			p, err := Plan(topo, vis, tt.opts)
			if err != nil || len(p.Ranks) != tt.ranks {
				t.Fatalf("Plan(%s, %+v) = %v, %v; want %d ranks", tt.file, tt.opts, p, err, tt.ranks)
			}
			checkPlan(t, topo, p, tt.opts)
		})
	}
}

// TestChooseGreedy checks the search used past maxCombinations on a made-up
// 32-GPU node of NVLink quads: 4 devices still land on one quad.
func TestChooseGreedy(t *testing.T) {
	n := 32
	topo := &Topology{Links: make([][]Link, n)}
	for i := range n {
		topo.GPUs = append(topo.GPUs, Device{Index: i, UUID: fmt.Sprintf("GPU-%02d", i), NUMANode: i / 16})
		topo.Links[i] = make([]Link, n)
		for j := range n {
			switch {
			case i == j:
				topo.Links[i][j] = LinkSelf
			case i/4 == j/4 && i >= 8:
				topo.Links[i][j] = NVLink(2)
			default:
				topo.Links[i][j] = LinkSYS
			}
		}
	}
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	vis, _, _ := Visible(topo, "", false)
	if binomial(n, 12) <= maxCombinations {
		t.Fatalf("binomial(%d, 12) = %d; want it past maxCombinations", n, binomial(n, 12))
	}
	tests := []struct {
		k    int
		want string
	}{
		{k: 1, want: "8"},
		{k: 4, want: "8 9 10 11"},
		{k: 12, want: "8 9 10 11 12 13 14 15 16 17 18 19"},
	}
	for _, tt := range tests {
		if got := strings.Join(names(chooseGreedy(topo, vis, tt.k)), " "); got != tt.want {
			t.Errorf("chooseGreedy(%d) = %v; want %v", tt.k, got, tt.want)
		}
	}
	p, err := Plan(topo, vis, PlanOptions{NProc: 12})
	if err != nil || len(p.Ranks) != 12 {
		t.Fatalf("Plan(32 gpus, 12 ranks) = %v, %v; want 12 ranks", p, err)
	}
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "not bound") || p.Ranks[0].CPUs.Len() != 0 {
		t.Errorf("Plan(32 gpus without cpu info) warnings = %q, rank 0 cpus %q; want one \"not bound\" warning", p.Warnings, p.Ranks[0].CPUs)
	}
	checkPlan(t, topo, p, PlanOptions{})
}

func TestParseCPUBind(t *testing.T) {
	tests := []struct {
		in      string
		want    CPUBind
		wantErr bool
	}{
		{in: "", want: CPUBindExclusive},
		{in: "exclusive", want: CPUBindExclusive},
		{in: "numa", want: CPUBindNUMA},
		{in: "none", want: CPUBindNone},
		{in: "core", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseCPUBind(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("ParseCPUBind(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
