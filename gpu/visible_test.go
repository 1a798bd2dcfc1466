package gpu

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// names writes a VisibleSet compactly: "3" for GPU 3, "0/2" for MIG device 2
// of GPU 0.
func names(s VisibleSet) []string {
	out := []string{}
	for _, d := range s {
		if d.MIG < 0 {
			out = append(out, fmt.Sprint(d.GPU))
		} else {
			out = append(out, fmt.Sprintf("%d/%d", d.GPU, d.MIG))
		}
	}
	return out
}

func TestVisible(t *testing.T) {
	dgx := loadTopo(t, "dgx-a100-nvswitch.json")
	mig := loadTopo(t, "a100-mig.json")
	none := loadTopo(t, "cpu-only.json")
	g0, g5 := dgx.GPUs[0].UUID, dgx.GPUs[5].UUID
	m1, m3 := mig.GPUs[0].MIGDevices[1].UUID, mig.GPUs[0].MIGDevices[3].UUID
	all8 := []string{"0", "1", "2", "3", "4", "5", "6", "7"}
	migAll := []string{"0/0", "0/1", "0/2", "0/3"}
	tests := []struct {
		name     string
		topo     *Topology
		value    string
		unset    bool
		want     []string
		warnings int  // how many warnings
		wantErr  bool // a *VisibleError, which no warning repeats
	}{
		{name: "unset", topo: dgx, unset: true, want: all8},
		{name: "unset no gpus", topo: none, unset: true, want: []string{}},
		{name: "empty", topo: dgx, value: "", want: []string{}},
		{name: "spaces only", topo: dgx, value: "  ", want: []string{}},
		{name: "minus one", topo: dgx, value: "-1", want: []string{}},
		{name: "minus one then more", topo: dgx, value: "-1,0", want: []string{}, warnings: 1},
		{name: "indices", topo: dgx, value: "0,4,5", want: []string{"0", "4", "5"}},
		{name: "order kept", topo: dgx, value: "2,1", want: []string{"2", "1"}},
		{name: "cuda docs -1 example", topo: dgx, value: "0,2,-1,1", want: []string{"0", "2"}, warnings: 1},
		{name: "trailing -1", topo: dgx, value: "0,-1", want: []string{"0"}},
		{name: "spaces", topo: dgx, value: " 1 , 2", want: []string{"1", "2"}},
		{name: "strtoul suffix", topo: dgx, value: "1gpu,2ampere", want: []string{"1", "2"}},
		{name: "plus sign", topo: dgx, value: "+3", want: []string{"3"}},
		{name: "out of range ends", topo: dgx, value: "1,8,2", want: []string{"1"}, warnings: 1},
		{name: "not a number ends", topo: dgx, value: "1,x,2", want: []string{"1"}, warnings: 1},
		{name: "empty entry ends", topo: dgx, value: "1,,2", want: []string{"1"}, warnings: 1},
		{name: "trailing comma", topo: dgx, value: "1,", want: []string{"1"}, warnings: 1},
		{name: "first invalid", topo: dgx, value: "9", wantErr: true},
		{name: "index on no gpus", topo: none, value: "0", wantErr: true},
		{name: "duplicate index", topo: dgx, value: "0,1,0", wantErr: true},
		{name: "duplicate after strtoul", topo: dgx, value: "1,1x", wantErr: true},
		{name: "full uuid", topo: dgx, value: g5, want: []string{"5"}},
		{name: "uuids", topo: dgx, value: g5 + "," + g0, want: []string{"5", "0"}},
		{name: "uuid prefix", topo: dgx, value: "GPU-4c1,GPU-a84e", want: []string{"0", "5"}},
		{name: "uuid spaces", topo: dgx, value: " GPU-4c1 , GPU-a84e ", want: []string{"0", "5"}},
		{name: "ambiguous prefix ends", topo: dgx, value: "GPU-4c1,GPU-8e,GPU-a84e", want: []string{"0"}, warnings: 1},
		{name: "ambiguous first", topo: dgx, value: "GPU-4c", wantErr: true},
		{name: "bare GPU- ambiguous", topo: dgx, value: "GPU-", wantErr: true},
		{name: "unknown uuid ends", topo: dgx, value: "GPU-4c1,GPU-ffff", want: []string{"0"}, warnings: 1},
		{name: "uuid case matters", topo: dgx, value: "GPU-A84E", wantErr: true},
		{name: "duplicate uuid", topo: dgx, value: "GPU-4c1," + g0, wantErr: true},
		{name: "index after uuid ends", topo: dgx, value: "GPU-4c1,3", want: []string{"0"}, warnings: 1},
		{name: "uuid after index ends", topo: dgx, value: "3,GPU-4c1", want: []string{"3"}, warnings: 1},
		{name: "mig unset", topo: mig, unset: true, want: migAll},
		{name: "mig gpu by index", topo: mig, value: "0", want: migAll},
		{name: "mig gpu by uuid", topo: mig, value: "GPU-24cf", want: migAll},
		{name: "mig uuids", topo: mig, value: m3 + "," + m1, want: []string{"0/3", "0/1"}},
		{name: "mig prefix", topo: mig, value: "MIG-0f5d", want: []string{"0/1"}},
		{name: "mig unknown ends", topo: mig, value: "MIG-0f5d,MIG-beef", want: []string{"0/1"}, warnings: 1},
		{name: "gpu uuid after mig ends", topo: mig, value: "MIG-0f5d,GPU-24cf", want: []string{"0/1"}, warnings: 1},
		{name: "mig duplicate", topo: mig, value: "MIG-0f5d," + m1, wantErr: true},
		{name: "mig index out of range", topo: mig, value: "1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, warnings, err := Visible(tt.topo, tt.value, !tt.unset)
			if tt.wantErr {
				var ve *VisibleError
				if !errors.As(err, &ve) || !errors.Is(err, ErrInvalidVisible) || got != nil {
					t.Fatalf("Visible(%q) = %v, %v; want a *VisibleError", tt.value, names(got), err)
				}
			} else if err != nil || got == nil || !slices.Equal(names(got), tt.want) {
				t.Fatalf("Visible(%q) = %v, %v; want %v", tt.value, names(got), err, tt.want)
			}
			if len(warnings) != tt.warnings {
				t.Errorf("Visible(%q) warnings = %q; want %d", tt.value, warnings, tt.warnings)
			}
		})
	}
}

// TestVisibleError checks the fields of the error for a value that hides
// every device: errors.As gives the value, the entry that ended the list and
// why, for a caller to word its own message.
func TestVisibleError(t *testing.T) {
	dgx := loadTopo(t, "dgx-a100-nvswitch.json")
	tests := []struct {
		value, entry, reason string
	}{
		{"9", "9", "index 9 is out of range (8 gpus)"},
		{"bogus,1", "bogus", `"bogus" is not an index`},
		{" ,1", " ", `"" is not an index`},
		{"0,1,0", "0", `"0" names a device already listed`},
		{"GPU-4c", "GPU-4c", `"GPU-4c" is ambiguous`},
		{"GPU-ffff", "GPU-ffff", `"GPU-ffff" matches no device`},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			_, warnings, err := Visible(dgx, tt.value, true)
			var ve *VisibleError
			if !errors.As(err, &ve) {
				t.Fatalf("Visible(%q) = %v; want a *VisibleError", tt.value, err)
			}
			if ve.Value != tt.value || ve.Entry != tt.entry || !strings.HasPrefix(ve.Reason, tt.reason) {
				t.Errorf("Visible(%q) = %#v; want Value %q, Entry %q, Reason starting %q", tt.value, ve, tt.value, tt.entry, tt.reason)
			}
			if want := fmt.Sprintf("gpu: CUDA_VISIBLE_DEVICES=%q leaves no device visible: %s", tt.value, ve.Reason); err.Error() != want {
				t.Errorf("Visible(%q) error = %q; want %q", tt.value, err, want)
			}
			if len(warnings) != 0 {
				t.Errorf("Visible(%q) warnings = %q; want none (the error says it)", tt.value, warnings)
			}
		})
	}
}

func TestVisibleMixedModels(t *testing.T) {
	topo := loadTopo(t, "workstation-2gpu.json")
	topo.GPUs[1].Name = "NVIDIA GeForce RTX 3090"
	tests := []struct {
		value    string
		warnings int
	}{
		{value: "1,0", warnings: 1},
		{value: topo.GPUs[1].UUID, warnings: 0},
		{value: "", warnings: 0},
	}
	for _, tt := range tests {
		_, warnings, err := Visible(topo, tt.value, true)
		if err != nil || len(warnings) != tt.warnings {
			t.Errorf("Visible(%q) = %q, %v; want %d warnings", tt.value, warnings, err, tt.warnings)
		}
		if tt.warnings > 0 && !strings.Contains(warnings[0], "CUDA_DEVICE_ORDER=PCI_BUS_ID") {
			t.Errorf("Visible(%q) warnings = %q; want CUDA_DEVICE_ORDER advice", tt.value, warnings)
		}
	}
}

// TestVisibleValue checks that what mpspawn hands a rank names devices by
// UUID and reads back as the same devices, in order.
func TestVisibleValue(t *testing.T) {
	dgx := loadTopo(t, "dgx-a100-nvswitch.json")
	mig := loadTopo(t, "a100-mig.json")
	tests := []struct {
		topo  *Topology
		value string
	}{
		{dgx, "7,0,3"},
		{dgx, "GPU-4c1"},
		{mig, "0"},
		{mig, "MIG-0f5d"},
	}
	for _, tt := range tests {
		set, _, err := Visible(tt.topo, tt.value, true)
		if err != nil {
			t.Fatal(err)
		}
		v := set.Value()
		if !strings.HasPrefix(v, "GPU-") && !strings.HasPrefix(v, "MIG-") {
			t.Errorf("Visible(%q).Value() = %q; want UUIDs", tt.value, v)
		}
		back, _, err := Visible(tt.topo, v, true)
		if err != nil || !slices.Equal(back, set) {
			t.Errorf("Visible(%q) = %v, %v; want %v", v, names(back), err, names(set))
		}
	}
	if v := (VisibleSet{}).Value(); v != "-1" {
		t.Errorf("VisibleSet{}.Value() = %q; want %q", v, "-1")
	}
}
