//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The doc test: every command README.md and docs/*.md show runs here as
// printed, or is marked as illustrative. Markers are HTML comments on the
// line before a fence, invisible on the rendered page:
//
//	<!-- illustrative: WHY -->   not run (needs 8 GPUs, a cluster, the network, ...)
//	<!-- doc-test: torch -->     run only where /usr/bin/python3 has torch (always in CI)
//	<!-- doc-test: exit N -->    the block's last command exits N
//
// A ```sh (or bash, shell) block runs as one bash script, with set -e; a
// block of any kind whose lines start with "$ " is a transcript: each
// command runs and its output must be the lines printed after it, where a
// line "…" stands for any lines and a line ending in "…" for any line that
// starts with what is before it. Commands run in the repository, with the
// mpspawn `make build` makes first on PATH.

// docBlock is one fenced block of a document.
type docBlock struct {
	File  string
	Line  int // of the opening fence
	Info  string
	Text  []string
	Marks map[string]string // marker → its argument
}

var (
	fenceRE  = regexp.MustCompile("^```([a-z]*)")
	markerRE = regexp.MustCompile(`^<!-- (illustrative|doc-test): ?(.*?) -->$`)
)

// docBlocks reads the fenced blocks of a Markdown file.
func docBlocks(path string) ([]docBlock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var blocks []docBlock
	var cur *docBlock
	var prev string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch m := fenceRE.FindStringSubmatch(l); {
		case cur != nil && strings.HasPrefix(l, "```"):
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.Text = append(cur.Text, l)
		case m != nil:
			cur = &docBlock{File: path, Line: n, Info: m[1], Marks: map[string]string{}}
			if mk := markerRE.FindStringSubmatch(strings.TrimSpace(prev)); mk != nil {
				key, arg := mk[1], mk[2]
				if key == "doc-test" {
					key, arg, _ = strings.Cut(arg, " ")
				}
				cur.Marks[key] = arg
			}
		}
		prev = l
	}
	return blocks, sc.Err()
}

// commands reports whether the block holds commands: a shell block, or
// a transcript of any kind.
func (b docBlock) commands() bool {
	switch b.Info {
	case "sh", "bash", "shell", "console":
		return true
	}
	return b.transcript()
}

func (b docBlock) transcript() bool {
	for _, l := range b.Text {
		if strings.HasPrefix(l, "$ ") {
			return true
		}
	}
	return false
}

func (b docBlock) name() string { return fmt.Sprintf("%s:%d", b.File, b.Line) }

// docFiles are the documents the test reads, relative to the repository.
func docFiles(repo string) []string {
	files := []string{"README.md"}
	m, _ := filepath.Glob(filepath.Join(repo, "docs", "*.md"))
	for _, p := range m {
		files = append(files, filepath.Join("docs", filepath.Base(p)))
	}
	return files
}

func TestDocCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every documented command; skipped under -short")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	mk := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", repo, "build", "BIN="+filepath.Join(bin, "mpspawn"))
	out, err := mk.CombinedOutput()
	cancel()
	if err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	for _, file := range docFiles(repo) {
		blocks, err := docBlocks(filepath.Join(repo, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			b.File = file
			if !b.commands() {
				continue
			}
			t.Run(b.name(), func(t *testing.T) { runDocBlock(t, repo, bin, b) })
		}
	}
}

func runDocBlock(t *testing.T, repo, bin string, b docBlock) {
	if why, ok := b.Marks["illustrative"]; ok {
		if why == "" {
			t.Errorf("%s: <!-- illustrative: --> says why", b.name())
		}
		t.Skipf("illustrative: %s", why)
	}
	if _, ok := b.Marks["torch"]; ok {
		ok, err := torchCondition()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Skip("needs torch")
		}
	}
	wantExit := 0
	if s, ok := b.Marks["exit"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("%s: <!-- doc-test: exit %s -->: not a number", b.name(), s)
		}
		wantExit = n
	}
	if !b.transcript() {
		out, code := docRun(t, repo, bin, strings.Join(b.Text, "\n"))
		if code != wantExit {
			t.Errorf("%s: the block exited %d; want %d\n%s", b.name(), code, wantExit, out)
		}
		return
	}
	steps := transcriptSteps(b.Text)
	for i, step := range steps {
		out, code := docRun(t, repo, bin, step.cmd)
		want := 0
		if i == len(steps)-1 {
			want = wantExit
		}
		if code != want {
			t.Errorf("%s: $ %s exited %d; want %d\n%s", b.name(), step.cmd, code, want, out)
		}
		if !outputMatches(strings.Split(strings.TrimRight(out, "\n"), "\n"), step.want) {
			t.Errorf("%s: $ %s printed:\n%s\nthe document shows:\n%s", b.name(), step.cmd, out, strings.Join(step.want, "\n"))
		}
	}
}

// docRun runs script with bash in the repository, mpspawn first on PATH,
// and returns its combined output and exit code.
func docRun(t *testing.T, repo, bin, script string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "COLUMNS=100")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s: did not end within 5 minutes\n%s", script, out)
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("bash: %v", err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

type transcriptStep struct {
	cmd  string
	want []string
}

// transcriptSteps cuts a transcript into commands and their output; a
// command's comment ("# ...") is not part of it.
func transcriptSteps(lines []string) []transcriptStep {
	var steps []transcriptStep
	for _, l := range lines {
		if c, ok := strings.CutPrefix(l, "$ "); ok {
			steps = append(steps, transcriptStep{cmd: c})
			continue
		}
		if len(steps) > 0 {
			s := &steps[len(steps)-1]
			s.want = append(s.want, l)
		}
	}
	return steps
}

// outputMatches matches got against want, where a line "…" is any lines
// (none included) and a line ending in "…" any line with that prefix;
// trailing spaces are ignored.
func outputMatches(got, want []string) bool {
	if len(want) == 0 {
		return true // the document shows no output: not checked
	}
	if len(got) == 1 && got[0] == "" {
		got = nil
	}
	var match func(g, w []string) bool
	match = func(g, w []string) bool {
		switch {
		case len(w) == 0:
			return len(g) == 0
		case strings.TrimSpace(w[0]) == "…":
			for i := 0; i <= len(g); i++ {
				if match(g[i:], w[1:]) {
					return true
				}
			}
			return false
		case len(g) == 0:
			return false
		}
		gl, wl := strings.TrimRight(g[0], " "), strings.TrimRight(w[0], " ")
		if p, ok := strings.CutSuffix(wl, "…"); ok {
			if !strings.HasPrefix(gl, p) {
				return false
			}
		} else if gl != wl {
			return false
		}
		return match(g[1:], w[1:])
	}
	return match(got, want)
}

func TestOutputMatches(t *testing.T) {
	tests := []struct {
		got, want []string
		ok        bool
	}{
		{[]string{"a", "b"}, []string{"a", "b"}, true},
		{[]string{"a", "b"}, []string{"a", "c"}, false},
		{[]string{"a", "b", "c"}, []string{"a", "…"}, true},
		{[]string{"a", "b", "c"}, []string{"…", "c"}, true},
		{[]string{"abc"}, []string{"ab…"}, true},
		{[]string{"xbc"}, []string{"ab…"}, false},
		{[]string{"a"}, []string{"a", "b"}, false},
		{[]string{"a", "b"}, nil, true},
	}
	for _, tt := range tests {
		if got := outputMatches(tt.got, tt.want); got != tt.ok {
			t.Errorf("outputMatches(%q, %q) = %v; want %v", tt.got, tt.want, got, tt.ok)
		}
	}
}
