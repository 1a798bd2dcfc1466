//go:build linux

package main

import (
	"bufio"
	"encoding/json"
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

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/sys/unix"
)

// TestMain lets the test binary act as the mpspawn CLI and as the helper
// rank (package testrank) when testscript runs them by name.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"mpspawn":     func() { os.Exit(run(os.Args, os.Stdout, os.Stderr)) },
		testrank.Name: func() { os.Exit(testrank.Main(os.Args[1:])) },
	})
}

func TestScript(t *testing.T) {
	testscript.Run(t, scriptParams(t, "testdata/script", nil))
}

// TestScriptMethods runs the scripts of testdata/script/methods once per
// start method, with $METHOD set to it: the launcher's guarantees for
// Python ranks hold under both.
func TestScriptMethods(t *testing.T) {
	for _, method := range []string{"spawn", "forkserver"} {
		t.Run(method, func(t *testing.T) {
			testscript.Run(t, scriptParams(t, "testdata/script/methods", map[string]string{"METHOD": method}))
		})
	}
}

// scriptParams are the testscript parameters of the CLI's scripts in dir,
// with env set in every script.
func scriptParams(t *testing.T, dir string, env map[string]string) testscript.Params {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return testscript.Params{
		Dir:                 dir,
		RequireExplicitExec: true,
		Setup: func(e *testscript.Env) error {
			e.Setenv("REPO", repo)
			// A Python that starts at once (no pyenv-style shim before it),
			// for scripts whose timing bounds include the interpreter's start.
			py := "python3"
			if _, err := os.Stat(systemPython); err == nil {
				py = systemPython
			}
			e.Setenv("PY3", py)
			if py, _ := torchPython(); py != "" {
				e.Setenv("TORCH_PYTHON", py)
			}
			for k, v := range env {
				e.Setenv(k, v)
			}
			return nil
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "torch":
				return torchCondition()
			case "nvidia":
				d, err := gpu.Discover(gpu.DiscoverOptions{})
				return err == nil && len(d.Topology.GPUs) > 0, err
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"gone":       cmdGone,
			"linesmatch": cmdLinesMatch,
			"mkfifo":     cmdMkfifo,
			"exitcode":   cmdExitCode,
			"jsonget":    cmdJSONGet,
			"freeport":   cmdFreePort,
		},
	}
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

// cmdJSONGet: jsonget FILE PATH REGEXP — the value at PATH (dot-separated
// object keys and array indices, such as ranks.1.gpus.0) of the JSON document
// in FILE (stdout, stderr or a path) matches REGEXP. Strings are matched
// bare, other values as compact JSON.
func cmdJSONGet(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 3 {
		ts.Fatalf("usage: jsonget FILE PATH REGEXP")
	}
	var v any
	ts.Check(json.Unmarshal([]byte(ts.ReadFile(args[0])), &v))
	for _, key := range strings.Split(args[1], ".") {
		switch node := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = node[key]; !ok {
				ts.Fatalf("jsonget: %s: no key %q", args[1], key)
			}
		case []any:
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(node) {
				ts.Fatalf("jsonget: %s: no element %q in a list of %d", args[1], key, len(node))
			}
			v = node[i]
		default:
			ts.Fatalf("jsonget: %s: %q is inside a %T", args[1], key, node)
		}
	}
	s, ok := v.(string)
	if !ok {
		b, err := json.Marshal(v)
		ts.Check(err)
		s = string(b)
	}
	if matched := regexp.MustCompile(args[2]).MatchString(s); matched == neg {
		ts.Fatalf("jsonget: %s is %q; match %q = %v", args[1], s, args[2], matched)
	}
}
