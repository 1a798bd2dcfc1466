package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSummary runs testsum on a module of three tests (one passes, one
// fails, one skips) and checks its lines and exit code.
func TestSummary(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module example.com/sum\n\ngo 1.22\n",
		"a_test.go": `package sum

import "testing"

func TestOK(t *testing.T)   {}
func TestBad(t *testing.T)  { t.Fatal("broken on purpose") }
func TestSkip(t *testing.T) { t.Skip("needs a GPU") }
`,
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "testsum")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.CommandContext(ctx, bin, "-count=1", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 {
		t.Errorf("testsum on a failing package: %v; want exit code 1 (go test's)", err)
	}
	for _, want := range []string{
		"--- FAIL example.com/sum TestBad",
		"broken on purpose",
		"FAIL example.com/sum",
		"1 tests passed, 1 failed, 1 skipped",
		"  example.com/sum TestSkip: a_test.go:7: needs a GPU",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("testsum printed:\n%s\nwant a line with %q", out, want)
		}
	}
}
