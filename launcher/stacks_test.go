//go:build linux

package launcher

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/launcher/diag"
)

// stuckScript is a Python rank that says it started, then hangs where a
// DDP rank would, printing nothing more.
const stuckScript = `import threading
print("started", flush=True)
def stuck_in_allreduce():
    threading.Event().wait()
stuck_in_allreduce()
`

const stuckLine = `line 4 in stuck_in_allreduce` // faulthandler's words

// pythonStuck writes stuckScript into dir and returns a python3 and the
// script's path: /usr/bin/python3 where there is one, which starts at once
// (a pyenv-style shim on PATH runs a shell first, and a short bound could
// pass before the rank is Python).
func pythonStuck(t *testing.T, dir string) (string, string) {
	t.Helper()
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		if python, err = exec.LookPath("python3"); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("python3 is needed (scripts/install-test-deps.sh installs it)")
			}
			t.Skip("no python3")
		}
	}
	script := filepath.Join(dir, "stuck.py")
	if err := os.WriteFile(script, []byte(stuckScript), 0o644); err != nil {
		t.Fatal(err)
	}
	return python, script
}

// noCores fails the test if dir holds a core file.
func noCores(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "core") {
			t.Errorf("core file %s left in %s", e.Name(), dir)
		}
	}
}

// hangResult runs specs with a 2s hang timeout and checks that the job
// was stopped for a hang, with no root cause rank.
func hangResult(t *testing.T, specs []Spec, opts Options) *Result {
	t.Helper()
	opts.Watchdog.HangTimeout = 2 * time.Second
	opts.Stop.GracePeriod = 5 * time.Second
	g, err := Start(context.Background(), specs, opts)
	if err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, g)
	var he *diag.HangError
	if !errors.As(res.Cause, &he) || he.Quiet != 2*time.Second || res.Succeeded() || res.RootCause != -1 {
		t.Fatalf("result cause = %v, root cause %d; want a hang of 2s and no rank as root cause", res.Cause, res.RootCause)
	}
	if got := diag.Reason(res.Cause); got != "hang: no output for 2s" {
		t.Errorf("reason = %q; want %q", got, "hang: no output for 2s")
	}
	return res
}

func TestHangPythonStacks(t *testing.T) {
	dir := t.TempDir()
	python, script := pythonStuck(t, dir)
	for _, name := range []string{MethodSpawn, MethodForkserver} {
		t.Run(name, func(t *testing.T) {
			var method StartMethod
			python := python
			if name == MethodForkserver {
				method, python, _ = startForkserver(t) // its ranks are its own python's
			}
			specs := []Spec{pySpec(0, python, script), pySpec(1, python, script)}
			for i := range specs {
				specs[i].Dir = dir
			}
			res := hangResult(t, specs, Options{Method: method})
			for _, r := range res.Ranks {
				st := r.Stack
				if st == nil || st.Kind != diag.StackPython || !strings.Contains(st.Text, stuckLine) || !strings.Contains(st.Text, "stuck.py") {
					t.Errorf("rank %d stack = %+v; want a Python stack with %q", r.Rank, st, stuckLine)
				}
				if !r.Stopped || r.Signal != syscall.SIGTERM {
					t.Errorf("rank %d: stopped %v, %s; want stopped by SIGTERM", r.Rank, r.Stopped, r.Status())
				}
			}
			noCores(t, dir)
		})
	}
}

func TestHangGoStacks(t *testing.T) {
	dir := t.TempDir()
	specs := []Spec{helperSpec(0, "stuck", os.DevNull), helperSpec(1, "stuck", os.DevNull)}
	for i := range specs {
		specs[i].Dir = dir
		specs[i].Stderr = NewTail(nil)
		specs[i].Env = append(specs[i].Env, "GOTRACEBACK=crash") // would dump core, but for the launcher
	}
	res := hangResult(t, specs, Options{})
	for _, r := range res.Ranks {
		st := r.Stack
		if st == nil || st.Kind != diag.StackGo || !strings.Contains(st.Text, "testrank.stuckInAllreduce(") || !strings.Contains(st.Text, "goroutine ") {
			t.Errorf("rank %d stack = %+v; want the goroutines, stuckInAllreduce among them", r.Rank, st)
		}
		if !r.Stopped {
			t.Errorf("rank %d not marked stopped: %s", r.Rank, r.Status())
		}
	}
	noCores(t, dir)
}

// TestHangOtherProgram: a rank that is neither Python nor Go gets a note.
func TestHangOtherProgram(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	specs := []Spec{{Rank: 0, Path: sh, Args: []string{"sh", "-c", "echo started; read x < /dev/zero; exec sleep 600"}, Env: os.Environ()}}
	res := hangResult(t, specs, Options{})
	st := res.Ranks[0].Stack
	if st == nil || st.Kind != "" || !strings.Contains(st.Note, "no stack available") {
		t.Errorf("stack = %+v; want a note that none is available", st)
	}
}

// TestTimeout: a job that runs past Options.Watchdog.Timeout is stopped with its
// stacks, and exits 124.
func TestTimeout(t *testing.T) {
	dir := t.TempDir()
	python, script := pythonStuck(t, dir)
	g, err := Start(context.Background(), []Spec{pySpec(0, python, script)}, Options{Stop: StopOptions{GracePeriod: 5 * time.Second}, Watchdog: WatchdogOptions{Timeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, g)
	var te *diag.TimeoutError
	if !errors.As(res.Cause, &te) || res.ExitCode() != diag.TimeoutExitCode {
		t.Fatalf("cause = %v, exit code %d; want a timeout, %d", res.Cause, res.ExitCode(), diag.TimeoutExitCode)
	}
	if st := res.Ranks[0].Stack; st == nil || !strings.Contains(st.Text, stuckLine) {
		t.Errorf("stack = %+v; want %q", st, stuckLine)
	}
}

// TestNoHangWhileOutput: a rank that writes a line every 0.25 s for 4 s
// is not a hang under a 2 s bound (eight times its pace, for a loaded
// machine).
func TestNoHangWhileOutput(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	spec := Spec{Rank: 0, Path: sh, Args: []string{"sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do echo $i; sleep 0.25; done"}, Env: os.Environ(), Stdout: NewTail(nil)}
	g, err := Start(context.Background(), []Spec{spec}, Options{Watchdog: WatchdogOptions{HangTimeout: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if res := waitResult(t, g); !res.Succeeded() {
		t.Errorf("result cause %v; want success: the rank wrote every 0.25 s", res.Cause)
	}
}

// TestStackHookLeavesPython: under spawn, the hook gives the rank back its
// PYTHONPATH (set or unset) and sys.path, and the user's own
// sitecustomize still runs.
func TestStackHookLeavesPython(t *testing.T) {
	dir := t.TempDir()
	python, _ := pythonStuck(t, dir)
	user := filepath.Join(dir, "user")
	if err := os.Mkdir(user, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(user, "sitecustomize.py"), []byte("import builtins\nbuiltins.USER_SITE = True\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "show.py")
	src := `import os, sys, builtins
print("PYTHONPATH=%s" % os.environ.get("PYTHONPATH", "<unset>"))
print("user site: %s" % getattr(builtins, "USER_SITE", False))
print("hook on path: %s" % any("mpspawn-stacks" in p or p.endswith("/site") for p in sys.path))
`
	if err := os.WriteFile(script, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, pythonpath string
		want             []string
	}{
		{"unset", "", []string{"PYTHONPATH=<unset>", "user site: False", "hook on path: False"}},
		{"user's", user, []string{"PYTHONPATH=" + user, "user site: True", "hook on path: False"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := &syncBuffer{b: &bytes.Buffer{}}
			spec := pySpec(0, python, script)
			spec.Env = withoutEnv(spec.Env, "PYTHONPATH")
			if tt.pythonpath != "" {
				spec.Env = append(spec.Env, "PYTHONPATH="+tt.pythonpath)
			}
			spec.Stdout = out
			g, err := Start(context.Background(), []Spec{spec}, Options{Watchdog: WatchdogOptions{Stacks: true}})
			if err != nil {
				t.Fatal(err)
			}
			if res := waitResult(t, g); !res.Succeeded() {
				t.Fatalf("rank failed: %s", res.Ranks[0].Status())
			}
			for _, w := range tt.want {
				if !strings.Contains(out.b.String(), w+"\n") {
					t.Errorf("rank printed %q; want a line %q", out.b.String(), w)
				}
			}
		})
	}
}

func withoutEnv(env []string, key string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}
