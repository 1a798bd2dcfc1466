//go:build linux

package launcher

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// containments lists the containments this machine can run: process
// groups always, cgroups where they can be made.
func containments(t *testing.T) []Containment {
	out := []Containment{ContainProcessGroup}
	if err := CgroupError(); err == nil {
		out = append(out, ContainCgroup)
	} else {
		t.Logf("no cgroups here (%v): process-group containment only", err)
	}
	return out
}

// runCost runs specs to the end and returns the result, which must be a
// success.
func runCost(t *testing.T, specs []Spec, opts Options) *Result {
	t.Helper()
	g, err := Start(context.Background(), specs, opts)
	if err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, g)
	if !res.Succeeded() {
		t.Fatalf("result = %+v; want success", res)
	}
	return res
}

func TestCostPeakMemory(t *testing.T) {
	const mib = 300
	for _, cont := range containments(t) {
		t.Run(string(cont), func(t *testing.T) {
			res := runCost(t, []Spec{helperSpec(0, "alloc", "300"), helperSpec(1, "exit", "0")}, Options{Containment: cont})
			c := res.Ranks[0].Cost
			if c.PeakMemory < mib<<20 || c.MemorySource == "" {
				t.Errorf("rank 0 (touched %d MiB) cost = %+v; want a peak of at least %d MiB", mib, c, mib)
			}
			if small := res.Ranks[1].Cost.PeakMemory; small <= 0 || small >= c.PeakMemory {
				t.Errorf("rank 1 (touched nothing) peak = %d; want more than 0, less than rank 0's %d", small, c.PeakMemory)
			}
			if line := res.CostLine(); !strings.Contains(line, "(rank 0") || !strings.HasPrefix(line, "2 ranks ok in ") {
				t.Errorf("CostLine() = %q; want 2 ranks ok, the peak rank 0's", line)
			}
		})
	}
}

// TestCostCPU: a rank that burns a second of CPU time reports that CPU
// time, and no more CPU than wall time (one thread). The wall time is
// not asserted to be close to the CPU time: the test machine's other
// load would make that flaky.
func TestCostCPU(t *testing.T) {
	const burn = time.Second
	for _, cont := range containments(t) {
		t.Run(string(cont), func(t *testing.T) {
			res := runCost(t, []Spec{helperSpec(0, "spin", "1000")}, Options{Containment: cont})
			c := res.Ranks[0].Cost
			if c.CPU() < burn*8/10 || c.CPU() > burn*12/10 {
				t.Errorf("cost = %+v (CPU %v); want CPU within 20%% of the %v the rank burned", c, c.CPU(), burn)
			}
			if c.CPU() > c.Wall*12/10 || c.Wall <= 0 {
				t.Errorf("cost = %+v; want CPU %v within wall %v (+20%%)", c, c.CPU(), c.Wall)
			}
			want := SourceRusageCPU
			if cont == ContainCgroup {
				want = SourceCgroupCPU
			}
			if c.CPUSource != want {
				t.Errorf("CPUSource = %q; want %q", c.CPUSource, want)
			}
		})
	}
}

// TestCostForkserver: a forked rank's usage comes from the server's
// wait4.
func TestCostForkserver(t *testing.T) {
	fs, python, _ := startForkserver(t)
	script := filepath.Join(t.TempDir(), "alloc.py")
	src := "import time\nb = b'\\x01' * (300 << 20)\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n"
	if err := os.WriteFile(script, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cont := range containments(t) {
		t.Run(string(cont), func(t *testing.T) {
			res := runCost(t, []Spec{pySpec(0, python, script)}, Options{Containment: cont, Method: fs})
			c := res.Ranks[0].Cost
			if c.PeakMemory < 300<<20 {
				t.Errorf("cost = %+v; want a peak of at least 300 MiB", c)
			}
			if c.CPU() < 400*time.Millisecond || c.CPUSource == "" {
				t.Errorf("cost = %+v; want at least the 0.5 s of CPU the rank burned", c)
			}
		})
	}
}

func TestCostLine(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rank := func(r int, start, end, cpu time.Duration, mem, gpuMem int64, src string) RankResult {
		return RankResult{Rank: r, Started: t0.Add(start), Ended: t0.Add(end),
			Cost: Cost{User: cpu, PeakMemory: mem, MemorySource: src, GPUMemory: gpuMem}}
	}
	for _, tt := range []struct {
		name  string
		ranks []RankResult
		want  string
	}{
		{"cgroup", []RankResult{
			rank(0, 0, 12*time.Second, 11*time.Second, 1<<30, 0, SourceCgroupMemory),
			rank(1, 100*time.Millisecond, 12400*time.Millisecond, 12*time.Second, 1288490189, 0, SourceCgroupMemory),
		}, "2 ranks ok in 12.4 s; CPU 23.0 s; peak memory 1.2 GiB (rank 1)"},
		{"maxrss and GPU", []RankResult{
			rank(0, 0, time.Second, time.Second, 300<<20, 40<<30, SourceMaxRSS),
		}, "1 rank ok in 1.0 s; CPU 1.0 s; peak memory 300.0 MiB (rank 0, max RSS of the rank process); peak GPU memory 40.0 GiB (rank 0)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &Result{Ranks: tt.ranks, RootCause: -1}
			if got := r.CostLine(); got != tt.want {
				t.Errorf("CostLine() = %q; want %q", got, tt.want)
			}
		})
	}
}
