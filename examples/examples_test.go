//go:build linux

// Package examples_test builds and runs the Go examples as a user would and
// checks what they print.
package examples_test

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// build compiles ./<name> into a temporary directory.
func build(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("go", "build", "-o", bin, "./"+name).CombinedOutput(); err != nil {
		t.Fatalf("go build ./%s: %v\n%s", name, err, out)
	}
	return bin
}

func TestSpawnExample(t *testing.T) {
	out, err := exec.Command(build(t, "spawn"), "-n", "3").Output()
	if err != nil {
		t.Fatalf("spawn: %v", err)
	}
	want := regexp.MustCompile(`^hello from rank 0 of world size 3, pid \d+\nhello from rank 1 of world size 3, pid \d+\nhello from rank 2 of world size 3, pid \d+\n$`)
	if !want.Match(out) {
		t.Errorf("spawn printed:\n%s", out)
	}
}

// TestGoAPIProgramIsStatic: a Go API program (failfast: spawn also links
// the gpu package, which needs cgo for NVML) built with cgo enabled (the
// default wherever a C compiler is installed) is still statically linked,
// so that each rank, which re-executes it, pays no dynamic loading. It
// holds as long as nothing the Go API imports links package net (whose
// cgo resolver brings in libc) or another cgo package.
func TestGoAPIProgramIsStatic(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "failfast")
	cmd := exec.Command("go", "build", "-o", bin, "./failfast")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=1 go build ./failfast: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			libs, _ := f.ImportedLibraries()
			t.Errorf("the failfast example is dynamically linked (needs %v): something the Go API imports uses cgo (go list -deps ./launcher/mp | grep -x -e net -e runtime/cgo)", libs)
		}
	}
}

func TestFailfastExample(t *testing.T) {
	out, err := exec.Command(build(t, "failfast")).Output()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("failfast: %v; want exit code 1", err)
	}
	for _, re := range []string{
		`(?m)^rank 1 \(pid \d+\) failed: panic: runtime error: index out of range \[3\] with length 0$`,
		`(?m)^panicked: true`,
		`(?m)examples/failfast/main\.go:22( |$)`, // the line that panicked (an inlined frame has no +0x offset)
	} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("failfast output lacks %s:\n%s", re, out)
		}
	}
}

func TestPoolExample(t *testing.T) {
	out, err := exec.Command(build(t, "pool"), "-items", "8", "-chunksize", "2", "-workers", "2").Output()
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	for _, re := range []string{
		`(?m)^primes below 200000: 17984\n`,
		`(?m)^primes below 207000: \d+$`,
		`(?m)^serial .*, pool of 2 workers \(chunksize 2\) .*: speed-up \d+\.\d\dx$`,
	} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("pool output lacks %s:\n%s", re, out)
		}
	}
}

func TestSharedbufExample(t *testing.T) {
	out, err := exec.Command(build(t, "sharedbuf"), "-mib", "64", "-n", "4").Output()
	if err != nil {
		t.Fatalf("sharedbuf: %v\n%s", err, out)
	}
	sums := regexp.MustCompile(`(?m)^rank \d: sum (\d+)$`).FindAllSubmatch(out, -1)
	if len(sums) != 4 {
		t.Fatalf("sharedbuf printed %d sums:\n%s", len(sums), out)
	}
	for _, s := range sums {
		if string(s[1]) != string(sums[0][1]) {
			t.Errorf("ranks disagree on the sum:\n%s", out)
		}
	}
	m := regexp.MustCompile(`(?m)^BUFFER_MIB=64\nPSS_TOTAL_MIB=(\d+)$`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no BUFFER_MIB/PSS_TOTAL_MIB lines:\n%s", out)
	}
	// Four readers of a 64 MiB buffer cost about one buffer, not four.
	if pss, _ := strconv.Atoi(string(m[1])); pss > 64*11/10+64 {
		t.Errorf("PSS total %d MiB for 4 readers of 64 MiB; want at most %d", pss, 64*11/10+64)
	}
}

func TestDataparExample(t *testing.T) {
	out, err := exec.Command(build(t, "datapar"), "-ranks", "2", "-rows", "20000", "-steps", "60").Output()
	if err != nil {
		t.Fatalf("datapar: %v\n%s", err, out)
	}
	for _, re := range []string{
		`(?m)^2 ranks agree on the weights; loss 0\.000\d+; largest error against the true weights 0\.00\d+$`,
		`(?m)^1 rank: loss 0\.000\d+ in .*; 2 ranks: .*; speed-up \d+\.\d\dx$`,
	} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("datapar output lacks %s:\n%s", re, out)
		}
	}
}
