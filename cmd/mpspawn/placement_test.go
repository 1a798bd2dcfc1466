//go:build linux

package main

import (
	"bytes"
	"regexp"
	"strconv"
	"testing"

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/mpspawn/mpspawn/place"
)

// TestCPUFallbackBinding launches real ranks on this GPU-less machine with
// --nproc-per-node auto: one rank per CPU this process may use, each bound
// to its own CPU, as each rank reads back from /proc/self/status.
func TestCPUFallbackBinding(t *testing.T) {
	d, err := gpu.Discover(gpu.DiscoverOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Topology.GPUs) > 0 {
		t.Skip("this machine has NVIDIA GPUs")
	}
	allowed, err := gpu.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if allowed.Len() < 2 {
		t.Skipf("one CPU (%s): nothing to spread", allowed)
	}
	var stdout, stderr bytes.Buffer
	args := []string{"mpspawn", "--nproc-per-node", "auto", "--no-python", "sh", "-c",
		`grep Cpus_allowed_list /proc/self/status; echo "OMP=$OMP_NUM_THREADS CPUS=$MPSPAWN_CPUS"`}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run = %d; stderr:\n%s", code, &stderr)
	}
	if !regexp.MustCompile(`(?m)^mpspawn: note: no usable GPU on this machine .*; running on CPUs$`).Match(stderr.Bytes()) {
		t.Errorf("stderr has no CPU fallback note:\n%s", &stderr)
	}
	bound := map[int]place.CPUSet{}
	for _, m := range regexp.MustCompile(`(?m)^\[(\d+)\]: Cpus_allowed_list:\s*(\S+)$`).FindAllSubmatch(stdout.Bytes(), -1) {
		r, _ := strconv.Atoi(string(m[1]))
		if bound[r], err = place.ParseCPUList(string(m[2])); err != nil {
			t.Fatal(err)
		}
	}
	if len(bound) != allowed.Len() {
		t.Fatalf("%d ranks reported their CPUs; want one per allowed CPU (%s):\n%s", len(bound), allowed, &stdout)
	}
	all := place.CPUSet{}
	for r, cpus := range bound {
		if cpus.Len() != 1 || cpus.Intersect(all).Len() > 0 {
			t.Errorf("rank %d bound to %q; want one CPU of its own", r, cpus)
		}
		all = all.Union(cpus)
		want := "[" + strconv.Itoa(r) + "]: OMP=1 CPUS=" + cpus.String()
		if !bytes.Contains(stdout.Bytes(), []byte(want+"\n")) {
			t.Errorf("rank %d: no line %q in\n%s", r, want, &stdout)
		}
	}
	if !all.Equal(allowed) {
		t.Errorf("ranks cover %q; want every allowed CPU %q", all, allowed)
	}

	// --cpu-bind none leaves every rank free to run anywhere.
	stdout.Reset()
	args[2] = "2"
	args = append(args[:1], append([]string{"--cpu-bind", "none"}, args[1:]...)...)
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run --cpu-bind none = %d; stderr:\n%s", code, &stderr)
	}
	want := "Cpus_allowed_list:\t" + allowed.String()
	if n := bytes.Count(stdout.Bytes(), []byte(want+"\n")); n != 2 {
		t.Errorf("--cpu-bind none: %d of 2 ranks report %q:\n%s", n, want, &stdout)
	}
}
