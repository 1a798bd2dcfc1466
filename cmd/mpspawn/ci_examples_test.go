//go:build linux

package main

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// networkMark ends a workflow line that needs the internet (installing
// torch from its index, Debian's packages): the test has no network, and
// Debian's python3-torch stands in for it.
const networkMark = "# mpspawn-ci: network"

// workflowCommands are the shell commands of a CI file in examples/ci, in
// order: GitHub's `run:` steps (a line, or a `|` block) and GitLab's
// before_script and script items; lines marked networkMark are left out.
func workflowCommands(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	block, indent := false, 0
	for _, l := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(l)
		lead := len(l) - len(strings.TrimLeft(l, " "))
		if block && (trimmed == "" || lead >= indent) {
			if trimmed != "" {
				cmds = append(cmds, strings.TrimPrefix(l, strings.Repeat(" ", indent)))
			}
			continue
		}
		block = false
		switch {
		case strings.HasSuffix(trimmed, networkMark):
		case trimmed == "run: |" || trimmed == "- run: |":
			block, indent = true, lead+2
		case strings.HasPrefix(trimmed, "run: "):
			cmds = append(cmds, strings.TrimPrefix(trimmed, "run: "))
		case strings.HasPrefix(trimmed, "- ") && lead >= 4 && !strings.Contains(trimmed, ": "):
			cmds = append(cmds, strings.TrimPrefix(trimmed, "- "))
		}
	}
	return cmds
}

// TestCIExamples runs the commands of examples/ci's GitHub Actions and
// GitLab CI files, as those files give them, in a copy of the repository:
// mpspawn's wheel installed into a Python environment that has torch, then
// 2 ranks of examples/python/ddp_train.py on the CPU with a JUnit report.
func TestCIExamples(t *testing.T) {
	repo := torchRepo(t, "builds the wheel and runs DDP twice")
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	goBin := filepath.Join(strings.TrimSpace(string(goroot)), "bin")
	for _, ci := range []struct{ file, venv string }{
		// setup-python + pip install torch: a venv that sees Debian's torch.
		{"github-actions.yml", "py"},
		// The image's Debian python3 with python3-torch; the file makes its venv.
		{"gitlab-ci.yml", ""},
	} {
		t.Run(ci.file, func(t *testing.T) {
			cmds := workflowCommands(t, filepath.Join(repo, "examples", "ci", ci.file))
			if len(cmds) < 2 {
				t.Fatalf("%s: found %d commands: %q", ci.file, len(cmds), cmds)
			}
			dir := t.TempDir()
			work := filepath.Join(dir, "work")
			copyTree(t, repo, work)
			path := goBin + ":/usr/bin:/bin"
			if ci.venv != "" {
				venv := filepath.Join(dir, ci.venv)
				if out, err := exec.Command("/usr/bin/python3", "-m", "venv", "--system-site-packages", venv).CombinedOutput(); err != nil {
					t.Fatalf("venv: %v\n%s", err, out)
				}
				path = filepath.Join(venv, "bin") + ":" + path
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", strings.Join(cmds, "\n"))
			cmd.Dir = work
			summary := filepath.Join(dir, "step-summary.md")
			cmd.Env = append(os.Environ(), "PATH="+path, "VIRTUAL_ENV=", "PYTHON_EXEC=",
				"GITHUB_ACTIONS=true", "GITHUB_STEP_SUMMARY="+summary, "GITHUB_WORKSPACE="+work)
			cmd.WaitDelay = 10 * time.Second
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("the commands of %s: %v\n%s\n%s", ci.file, err, strings.Join(cmds, "\n"), out)
			}
			report, err := os.ReadFile(filepath.Join(work, "mpspawn-junit.xml"))
			if err != nil {
				t.Fatalf("no JUnit report: %v\n%s", err, out)
			}
			if n := strings.Count(string(report), "<testcase "); n != 2 || strings.Contains(string(report), "<failure") {
				t.Errorf("the report has %d testcases, failures %v; want 2 passing:\n%s", n, strings.Contains(string(report), "<failure"), report)
			}
			if b, err := os.ReadFile(summary); err != nil || !strings.Contains(string(b), "| rank | node | state |") {
				t.Errorf("step summary: %v, %q; want the table of ranks", err, b)
			}
		})
	}
}

// copyTree copies the repository's files to dst, without its VCS data and
// build outputs.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		switch rel {
		case ".git", "bin", "dist", ".venv", "bench/out":
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil // a worktree's .git is a file
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			return os.WriteFile(target, b, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
