package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/mpspawn/mpspawn/launcher/job"
)

// GitHub Actions (GITHUB_ACTIONS=true): the root cause as a workflow
// annotation on the failing line, and a Markdown table of the ranks
// appended to $GITHUB_STEP_SUMMARY. Nothing of this otherwise.

// githubActions reports whether mpspawn runs in a GitHub Actions step.
func githubActions(getenv func(string) string) bool {
	return getenv("GITHUB_ACTIONS") == "true"
}

// frame is a place in a source file.
type frame struct {
	File string
	Line int
}

var (
	// `  File "/w/train.py", line 12, in main`
	pyFrame = regexp.MustCompile(`^\s*File "([^"]+)", line (\d+)`)
	// `	/w/main.go:23 +0x1d`
	goFrame = regexp.MustCompile(`^\t(/[^\s:]+\.go):(\d+)(?: \+0x[0-9a-f]+)?$`)
)

// userFrame is the innermost frame of a Python traceback, or of a Go
// panic's stack, that lies in the user's tree (under root, and not in an
// installed package), with its path relative to root.
func userFrame(text, root string) (frame, bool) {
	var found frame
	ok := false
	goStack := false
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "goroutine ") {
			goStack = true
			continue
		}
		var m []string
		if m = pyFrame.FindStringSubmatch(l); m == nil {
			if m = goFrame.FindStringSubmatch(l); m == nil {
				continue
			}
		}
		f, inTree := treeFrame(m[1], m[2], root)
		if !inTree {
			continue
		}
		found, ok = f, true
		if goStack {
			// A Go stack lists the innermost frame first.
			return found, true
		}
	}
	return found, ok
}

// treeFrame is file:line relative to root, when file is in root's tree
// and not in an installed package.
func treeFrame(file, line, root string) (frame, bool) {
	n, err := strconv.Atoi(line)
	if err != nil || root == "" {
		return frame{}, false
	}
	if !filepath.IsAbs(file) {
		file = filepath.Join(root, file)
	}
	rel, err := filepath.Rel(root, file)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return frame{}, false
	}
	for _, dir := range []string{"site-packages", "dist-packages", "/go/pkg/mod/", "<frozen"} {
		if strings.Contains(file, dir) {
			return frame{}, false
		}
	}
	return frame{File: rel, Line: n}, true
}

// githubRoot is the tree annotations are relative to: the workflow's
// workspace, else the working directory.
func githubRoot(getenv func(string) string) string {
	if w := getenv("GITHUB_WORKSPACE"); w != "" {
		return w
	}
	wd, _ := os.Getwd()
	return wd
}

// writeGitHubAnnotation prints the root cause as an ::error workflow
// command on w (stdout, where the runner reads them).
func writeGitHubAnnotation(w io.Writer, s *job.Summary, root string) {
	var props []string
	var msg string
	switch rc := s.RootCause; {
	case rc != nil:
		m, _, text := rankFailure(*rc)
		msg = m
		if f, ok := userFrame(text, root); ok {
			props = append(props, "file="+ghProperty(f.File), "line="+strconv.Itoa(f.Line))
		}
		props = append(props, "title="+ghProperty(fmt.Sprintf("rank %d failed", rc.Rank)))
	case jobCause(s) != "":
		msg = jobCause(s)
		props = append(props, "title="+ghProperty("mpspawn stopped the job"))
	default:
		return
	}
	fmt.Fprintf(w, "::error %s::%s\n", strings.Join(props, ","), ghData(msg))
}

// ghData escapes a workflow command's message.
func ghData(s string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A").Replace(s)
}

// ghProperty escapes a workflow command's property value.
func ghProperty(s string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A", ":", "%3A", ",", "%2C").Replace(s)
}

// writeStepSummary appends the job's table of ranks to path
// ($GITHUB_STEP_SUMMARY).
func writeStepSummary(path string, s *job.Summary) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("GITHUB_STEP_SUMMARY: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "### mpspawn %s: %s (exit code %d)\n\n", s.RunID, s.Status, s.ExitCode)
	if c := jobCause(s); c != "" {
		fmt.Fprintf(&b, "%s\n\n", mdCell(c))
	}
	b.WriteString("| rank | node | state | exit | wall | CPU | peak memory |\n|---:|---|---|---|---:|---:|---:|\n")
	for _, r := range s.Ranks {
		state := "succeeded"
		switch {
		case r.Stopped:
			state = "stopped by mpspawn"
		case failed(r):
			state = "failed"
			if s.RootCause != nil && s.RootCause.Rank == r.Rank {
				state = "**failed (root cause)**"
			}
		}
		exit := strconv.Itoa(r.ExitCode)
		if r.Signal != "" {
			exit = r.Signal
		}
		mem := "—"
		if r.Cost.PeakMemory > 0 {
			mem = fmt.Sprintf("%.1f MiB", float64(r.Cost.PeakMemory)/(1<<20))
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %.1f s | %.1f s | %s |\n", r.Rank, mdCell(r.Host), state, exit,
			r.Cost.WallSeconds, r.Cost.UserSeconds+r.Cost.SystemSeconds, mem)
	}
	if rc := s.RootCause; rc != nil {
		msg, _, _ := rankFailure(*rc)
		fmt.Fprintf(&b, "\nRoot cause: rank %d on %s: %s\n", rc.Rank, mdCell(rc.Host), mdCell(msg))
	}
	b.WriteString("\n")
	_, err = io.WriteString(f, b.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("GITHUB_STEP_SUMMARY: %w", err)
	}
	return nil
}

// mdCell is s made safe for one Markdown table cell.
func mdCell(s string) string {
	s = strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ").Replace(s)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
