//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestColdBuildQuiet: `make build` on a fresh machine prints nothing: no
// compiler warnings, not even go-nvml's -Wdeprecated-declarations. What a
// fresh machine compiles that could print is the cgo code (Go packages are
// silent), so the test makes every cgo package's compile new, with a C
// define no build has used, and keeps the build cache for the rest: a
// truly empty cache also compiles the etcd client, grpc and protobuf, 5
// minutes and more on 2 busy cores. Then a build without cgo says
// so: --version reports no GPU support, and --nproc-per-node gpu fails
// naming the reason, exit 2.
func TestColdBuildQuiet(t *testing.T) {
	if testing.Short() {
		t.Skip("a build of the cgo packages takes a minute; skipped under -short")
	}
	for _, tool := range []string{"make", "gcc", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: %v", tool, err)
		}
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "mpspawn")
	mk := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", repo, "build", "BIN="+bin)
	fresh := fmt.Sprintf("CGO_CFLAGS=-O2 -g -DMPSPAWN_COLD_BUILD_%d", time.Now().UnixNano())
	mk.Env = append(os.Environ(), fresh, "CGO_ENABLED=1")
	out, err := mk.CombinedOutput()
	if err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	if len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("make build of the cgo packages printed %d bytes; want none:\n%.3000s", len(out), out)
	}

	nocgo := filepath.Join(dir, "mpspawn-nocgo")
	build := exec.CommandContext(ctx, "go", "build", "-tags", "urfave_cli_no_docs", "-o", nocgo, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	out, err = exec.CommandContext(ctx, nocgo, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "gpu support: none: built without cgo") {
		t.Errorf("mpspawn --version (no cgo) = %v, %q; want it to say gpu support: none: built without cgo", err, out)
	}
	cmd := exec.CommandContext(ctx, nocgo, "--nproc-per-node", "gpu", "--no-python", "true")
	out, err = cmd.CombinedOutput()
	want := "mpspawn: error: --nproc-per-node gpu: no usable GPU on this machine: built without cgo: no GPU support\n"
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || string(out) != want {
		t.Errorf("mpspawn --nproc-per-node gpu (no cgo) = %v, %q; want exit 2 and %q", err, out, want)
	}
}
