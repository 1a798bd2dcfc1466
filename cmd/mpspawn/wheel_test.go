//go:build linux

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

// wheelRankScript is a 2-rank gloo DDP step that records the interpreter
// each rank runs under.
const wheelRankScript = `import os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
with open(os.path.join(sys.argv[1], "rank%d" % dist.get_rank()), "w") as f:
    f.write("%s %g\n" % (sys.executable, t.item()))
dist.destroy_process_group()
`

// TestWheel: make wheel's file installs offline into a fresh venv that
// sees Debian's torch; the venv's mpspawn, run by its full path with the
// venv off PATH and not activated, runs a 2-rank DDP job with the venv's
// Python; `python -m mpspawn --version` and the binary agree with the
// repository's VERSION; pip uninstall leaves nothing of mpspawn behind.
func TestWheel(t *testing.T) {
	repo := torchRepo(t, "builds mpspawn and a venv")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	sh := func(env []string, name string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = repo
		if env != nil {
			cmd.Env = env
		}
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	dist := filepath.Join(dir, "dist")
	sh(nil, "make", "--no-print-directory", "wheel", "BIN="+filepath.Join(dir, "mpspawn"), "DIST="+dist, "PYTHON="+systemPython)
	wheels, _ := filepath.Glob(filepath.Join(dist, "mpspawn-*-py3-none-linux_*.whl"))
	if len(wheels) != 1 {
		t.Fatalf("make wheel made %q; want one mpspawn-<version>-py3-none-linux_<arch>.whl", wheels)
	}
	version, err := os.ReadFile(filepath.Join(repo, "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	v := strings.TrimSpace(string(version))
	if want := "mpspawn-" + v + "-"; !strings.HasPrefix(filepath.Base(wheels[0]), want) {
		t.Errorf("wheel %s; want its name to start %s", filepath.Base(wheels[0]), want)
	}

	venv := filepath.Join(dir, "venv")
	sh(nil, systemPython, "-m", "venv", "--system-site-packages", venv)
	py := filepath.Join(venv, "bin", "python3")
	sh(nil, py, "-m", "pip", "install", "-q", "--no-index", wheels[0])

	// Not activated, not on PATH: as a user runs /path/venv/bin/mpspawn.
	env := []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "CI=" + os.Getenv("CI")}
	bin := filepath.Join(venv, "bin", "mpspawn")
	for _, argv := range [][]string{{bin, "--version"}, {py, "-m", "mpspawn", "--version"}} {
		if out := sh(env, argv[0], argv[1:]...); !strings.HasPrefix(out, "mpspawn "+v+"\n") {
			t.Errorf("%s = %q; want it to start %q", strings.Join(argv, " "), out, "mpspawn "+v)
		}
	}
	script := filepath.Join(dir, "ddp.py")
	if err := os.WriteFile(script, []byte(wheelRankScript), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	log := sh(env, bin, "--standalone", "--nproc-per-node", "2", script, out)
	if !strings.Contains(log, py) {
		t.Errorf("mpspawn's output does not name the interpreter it chose (%s):\n%s", py, log)
	}
	for r := 0; r < 2; r++ {
		b, err := os.ReadFile(filepath.Join(out, "rank"+string(rune('0'+r))))
		if err != nil {
			t.Fatalf("rank %d wrote nothing: %v\n%s", r, err, log)
		}
		if got, want := strings.TrimSpace(string(b)), py+" 3"; got != want {
			t.Errorf("rank %d: sys.executable, all_reduce = %q; want %q", r, got, want)
		}
	}

	sh(nil, py, "-m", "pip", "uninstall", "-y", "-q", "mpspawn")
	var left []string
	_ = filepath.WalkDir(venv, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(strings.ToLower(d.Name()), "mpspawn") {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("pip uninstall left %q", left)
	}
}

// torchRepo is the repository's root for a test that builds mpspawn and
// runs torch ranks (what: why it is long): skipped under -short, and where
// /usr/bin/python3 has no torch (except in CI, where that fails).
func torchRepo(t *testing.T, what string) string {
	t.Helper()
	if testing.Short() {
		t.Skip(what + "; skipped under -short")
	}
	ok, err := torchCondition()
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Skip("no torch for /usr/bin/python3")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return repo
}
