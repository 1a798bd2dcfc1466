//go:build linux

package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func generated(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(append([]string{"mpspawn"}, args...), &out, &errb); code != 0 {
		t.Fatalf("mpspawn %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
	}
	return out.String()
}

// TestCompletionBash: the bash script loads, and completes flags (both
// spellings), a flag's values and the subcommands, as bash itself runs it.
func TestCompletionBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	script := filepath.Join(t.TempDir(), "mpspawn.bash")
	if err := os.WriteFile(script, []byte(generated(t, "completion", "bash")), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		words []string
		want  string
	}{
		{[]string{"mpspawn", "--nproc-per"}, "--nproc-per-node"},
		{[]string{"mpspawn", "--nproc_per"}, "--nproc_per_node"},
		{[]string{"mpspawn", "--start-method", "fo"}, "forkserver"},
		{[]string{"mpspawn", "--rdzv-backend", "c"}, "c10d"},
		{[]string{"mpspawn", "complet"}, "completion"},
		{[]string{"mpspawn", "completion", "z"}, "zsh"},
	}
	for _, tt := range tests {
		args := append([]string{"-c", `source "$0" && COMP_WORDS=("${@}") && COMP_CWORD=$(($#-1)) && _mpspawn && printf '%s\n' "${COMPREPLY[@]}"`, script}, tt.words...)
		cmd := exec.Command("bash", args...)
		cmd.Dir = t.TempDir()
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains("\n"+string(out), "\n"+tt.want+"\n") {
			t.Errorf("complete %q = %v, %q; want %q among them", tt.words, err, out, tt.want)
		}
	}
}

// TestCompletionShells: zsh and fish scripts are made from the same flags;
// each shell, where installed, parses its script.
func TestCompletionShells(t *testing.T) {
	for _, sh := range []struct{ name, check string }{{"zsh", "-n"}, {"fish", "--no-execute"}} {
		text := generated(t, "completion", sh.name)
		if !strings.Contains(text, "nproc-per-node") || !strings.Contains(text, "forkserver") {
			t.Errorf("completion %s lacks --nproc-per-node or its values:\n%.500s", sh.name, text)
		}
		if _, err := exec.LookPath(sh.name); err != nil {
			continue
		}
		f := filepath.Join(t.TempDir(), "c")
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(sh.name, sh.check, f).CombinedOutput(); err != nil {
			t.Errorf("%s %s: %v\n%s", sh.name, sh.check, err, out)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"mpspawn", "completion", "tcsh"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "choose bash, zsh or fish") {
		t.Errorf("mpspawn completion tcsh = %d, %q; want 2 and one line naming the shells", code, errb.String())
	}
}

// TestInstallManPage: make install puts mpspawn and mpspawn.1 where `man
// mpspawn` finds the page from PATH alone, and the page renders with every
// flag --help lists.
func TestInstallManPage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mpspawn; skipped under -short")
	}
	if _, err := exec.LookPath("man"); err != nil {
		t.Skip("no man")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gobin := filepath.Join(dir, "bin")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mk := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", repo, "install", "GOBIN="+gobin)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	env := append(os.Environ(), "PATH="+gobin+":/usr/bin:/bin", "MANPATH=", "MANWIDTH=200")
	where := exec.CommandContext(ctx, "man", "-w", "mpspawn")
	where.Env = env
	out, err := where.CombinedOutput()
	if want := filepath.Join(dir, "share", "man", "man1", "mpspawn.1"); err != nil || strings.TrimSpace(string(out)) != want {
		t.Errorf("man -w mpspawn = %v, %q; want %s", err, out, want)
	}
	page := exec.CommandContext(ctx, "man", "mpspawn")
	page.Env = env
	out, err = page.CombinedOutput()
	if err != nil {
		t.Fatalf("man mpspawn: %v\n%s", err, out)
	}
	for _, want := range []string{"--nproc-per-node", "--start-method", "--junit-xml", "mpspawn completion"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("man mpspawn lacks %q", want)
		}
	}
	load := exec.CommandContext(ctx, "bash", "-c", "source <(mpspawn completion bash) && complete -p mpspawn")
	load.Env = env
	if out, err := load.CombinedOutput(); err != nil || !strings.Contains(string(out), "_mpspawn") {
		t.Errorf("bash -c 'source <(mpspawn completion bash)' = %v, %q", err, out)
	}
}
