package place

import (
	"encoding/json"
	"slices"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		in      string
		want    CPUSet
		str     string
		wantErr bool
	}{
		{in: "", want: CPUSet{}, str: ""},
		{in: "\n", want: CPUSet{}, str: ""},
		{in: "3", want: CPUSet{3}, str: "3"},
		{in: "0-3", want: CPUSet{0, 1, 2, 3}, str: "0-3"},
		{in: "0-1,4-5", want: CPUSet{0, 1, 4, 5}, str: "0-1,4-5"},
		{in: "0-15,32-47\n", want: append(seq(0, 15), seq(32, 47)...), str: "0-15,32-47"},
		{in: "5,3,4", want: CPUSet{3, 4, 5}, str: "3-5"},
		{in: "0-2,1-3", want: CPUSet{0, 1, 2, 3}, str: "0-3"},
		{in: " 1 , 3 - 4 ", want: CPUSet{1, 3, 4}, str: "1,3-4"},
		{in: "7-7", want: CPUSet{7}, str: "7"},
		{in: "0,2,4", want: CPUSet{0, 2, 4}, str: "0,2,4"},
		{in: "3-1", wantErr: true},
		{in: "a", wantErr: true},
		{in: "1,,2", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "1-", wantErr: true},
		{in: "+1", wantErr: true},
		{in: "0-99999999", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseCPUList(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseCPUList(%q) = %v; want an error", tt.in, got)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Fatalf("ParseCPUList(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if s := got.String(); s != tt.str {
				t.Errorf("ParseCPUList(%q).String() = %q; want %q", tt.in, s, tt.str)
			}
			again, err := ParseCPUList(got.String())
			if err != nil || !again.Equal(got) {
				t.Errorf("ParseCPUList(%q) after String = %v, %v; want %v", got.String(), again, err, got)
			}
		})
	}
}

func seq(lo, hi int) CPUSet {
	var s CPUSet
	for c := lo; c <= hi; c++ {
		s = append(s, c)
	}
	return s
}

func mustCPUs(t *testing.T, s string) CPUSet {
	t.Helper()
	c, err := ParseCPUList(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCPUSetOps(t *testing.T) {
	tests := []struct {
		a, b                    string
		intersect, union, minus string
	}{
		{a: "0-7", b: "4-11", intersect: "4-7", union: "0-11", minus: "0-3"},
		{a: "0-3", b: "", intersect: "", union: "0-3", minus: "0-3"},
		{a: "", b: "1", intersect: "", union: "1", minus: ""},
		{a: "0-15,32-47", b: "8-40", intersect: "8-15,32-40", union: "0-47", minus: "0-7,41-47"},
	}
	for _, tt := range tests {
		t.Run(tt.a+"/"+tt.b, func(t *testing.T) {
			a, b := mustCPUs(t, tt.a), mustCPUs(t, tt.b)
			if got := a.Intersect(b).String(); got != tt.intersect {
				t.Errorf("%q.Intersect(%q) = %q; want %q", tt.a, tt.b, got, tt.intersect)
			}
			if got := a.Union(b).String(); got != tt.union {
				t.Errorf("%q.Union(%q) = %q; want %q", tt.a, tt.b, got, tt.union)
			}
			if got := a.Difference(b).String(); got != tt.minus {
				t.Errorf("%q.Difference(%q) = %q; want %q", tt.a, tt.b, got, tt.minus)
			}
		})
	}
	if s := NewCPUSet(3, -1, 1, 3); !s.Equal(CPUSet{1, 3}) || s.Len() != 2 || !s.Contains(3) || s.Contains(2) {
		t.Errorf("NewCPUSet(3, -1, 1, 3) = %v; want [1 3]", s)
	}
}

func TestCPUSetSplit(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want []string // nil: Split returns nil
	}{
		{in: "0-7", n: 2, want: []string{"0-3", "4-7"}},
		{in: "0-9", n: 3, want: []string{"0-3", "4-6", "7-9"}},
		{in: "0-3", n: 4, want: []string{"0", "1", "2", "3"}},
		{in: "0-3", n: 1, want: []string{"0-3"}},
		{in: "0-15,32-47", n: 2, want: []string{"0-7,32-39", "8-15,40-47"}},
		{in: "0-15,32-47", n: 4, want: []string{"0-3,32-35", "4-7,36-39", "8-11,40-43", "12-15,44-47"}},
		{in: "0-15,32-47", n: 3, want: []string{"0-5,32-37", "6-10,38-42", "11-15,43-47"}},
		{in: "0-1,8-9", n: 3, want: []string{"0-1", "8", "9"}}, // runs shorter than n: plain split
		{in: "0-3,8-9", n: 2, want: []string{"0-2", "3,8-9"}},  // unequal runs: plain split
		{in: "0-2", n: 4},
		{in: "0-2", n: 0},
		{in: "", n: 1},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			parts := mustCPUs(t, tt.in).Split(tt.n)
			var got []string
			for _, p := range parts {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("%q.Split(%d) = %q; want %q", tt.in, tt.n, got, tt.want)
			}
		})
	}
}

func TestCPUSetJSON(t *testing.T) {
	type wrap struct {
		CPUs CPUSet `json:"cpus"`
	}
	tests := []struct {
		in      wrap
		want    string
		wantErr bool
	}{
		{in: wrap{CPUs: CPUSet{0, 1, 2, 3, 8}}, want: `{"cpus":"0-3,8"}`},
		{in: wrap{}, want: `{"cpus":""}`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			b, err := json.Marshal(tt.in)
			if err != nil || string(b) != tt.want {
				t.Fatalf("json.Marshal(%v) = %s, %v; want %s", tt.in, b, err, tt.want)
			}
			var back wrap
			if err := json.Unmarshal(b, &back); err != nil || !back.CPUs.Equal(tt.in.CPUs) {
				t.Fatalf("json.Unmarshal(%s) = %v, %v; want %v", b, back.CPUs, err, tt.in.CPUs)
			}
		})
	}
	for _, bad := range []string{`{"cpus":[0,1]}`, `{"cpus":"0-"}`, `{"cpus":3}`} {
		var w wrap
		if err := json.Unmarshal([]byte(bad), &w); err == nil {
			t.Errorf("json.Unmarshal(%s) = %v; want an error", bad, w.CPUs)
		}
	}
}
