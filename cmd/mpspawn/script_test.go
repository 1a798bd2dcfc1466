//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/sys/unix"
)

// TestMain lets the test binary act as the mpspawn CLI and as the "rank"
// helper program when testscript runs them by name.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"mpspawn": func() { os.Exit(run(os.Args, os.Stdout, os.Stderr)) },
		"rank":    func() { os.Exit(rankMain(os.Args[1:])) },
	})
}

func TestScript(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(e *testscript.Env) error {
			e.Setenv("REPO", repo)
			if py, _ := torchPython(); py != "" {
				e.Setenv("TORCH_PYTHON", py)
			}
			return nil
		},
		Condition: func(cond string) (bool, error) {
			if cond == "torch" {
				return torchCondition()
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"gone":       cmdGone,
			"linesmatch": cmdLinesMatch,
			"mkfifo":     cmdMkfifo,
			"exitcode":   cmdExitCode,
		},
	})
}

// cmdGone: gone FILE — every pid listed in FILE (whitespace separated)
// exits within one second. It waits on pidfds, not by polling.
func cmdGone(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: gone FILE")
	}
	pids := strings.Fields(ts.ReadFile(args[0]))
	if len(pids) == 0 {
		ts.Fatalf("gone: no pids in %s", args[0])
	}
	deadline := time.Now().Add(time.Second)
	for _, s := range pids {
		pid, err := strconv.Atoi(s)
		ts.Check(err)
		if !proctest.WaitExit(pid, time.Until(deadline)) {
			_ = unix.Kill(pid, unix.SIGKILL)
			ts.Fatalf("pid %d is still alive", pid)
		}
	}
}

// cmdLinesMatch: linesmatch FILE REGEXP COUNT — FILE (stdout, stderr or a
// path) has exactly COUNT lines matching REGEXP and no other line.
func cmdLinesMatch(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: linesmatch FILE REGEXP COUNT")
	}
	re := regexp.MustCompile(args[1])
	want, err := strconv.Atoi(args[2])
	ts.Check(err)
	n := 0
	sc := bufio.NewScanner(strings.NewReader(ts.ReadFile(args[0])))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if !re.MatchString(sc.Text()) {
			ts.Fatalf("line %d does not match %q: %.200q", n+1, args[1], sc.Text())
		}
		n++
	}
	if n != want {
		ts.Fatalf("%s has %d lines; want %d", args[0], n, want)
	}
}

// cmdMkfifo: mkfifo PATH.
func cmdMkfifo(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: mkfifo PATH")
	}
	ts.Check(unix.Mkfifo(ts.MkAbs(args[0]), 0o600))
}

// cmdExitCode: exitcode CODE PROG [ARGS...] — run PROG (like exec) and
// require exit code CODE; stdout and stderr are kept for later checks.
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode CODE PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		got = ee.ExitCode()
	case err != nil:
		ts.Fatalf("exitcode: %v", err)
	}
	if got != want {
		ts.Fatalf("%s exited %d; want %d", args[1], got, want)
	}
}
