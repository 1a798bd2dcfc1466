//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"
)

// systemPython is the interpreter Debian's python3-torch installs into.
const systemPython = "/usr/bin/python3"

// torchProbe imports torch and checks that its gloo backend is built in.
const torchProbe = "import torch, torch.distributed; assert torch.distributed.is_gloo_available()"

// torchProbeTimeout bounds the probe: a cold import of torch takes seconds.
const torchProbeTimeout = 120 * time.Second

var torchOnce struct {
	sync.Once
	path, reason string
}

// torchPython returns the interpreter that has torch ("/usr/bin/python3" when
// it can import torch), or "" with a reason. The probe runs once per test
// binary; later calls return its result.
func torchPython() (path string, reason string) {
	torchOnce.Do(func() {
		torchOnce.path, torchOnce.reason = probeTorch(systemPython)
	})
	return torchOnce.path, torchOnce.reason
}

// probeTorch runs the torch probe with python and says why it failed.
func probeTorch(python string) (path string, reason string) {
	if _, err := os.Stat(python); err != nil {
		return "", fmt.Sprintf("no %s: %v", python, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), torchProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", torchProbe)
	cmd.WaitDelay = 5 * time.Second // a grandchild holding the pipe cannot stall us
	out, err := cmd.CombinedOutput()
	switch {
	case ctx.Err() != nil:
		return "", fmt.Sprintf("%s: importing torch took longer than %v", python, torchProbeTimeout)
	case err != nil:
		return "", fmt.Sprintf("%s cannot import torch with gloo (%v): %s", python, err, lastLine(out))
	}
	return python, ""
}

// lastLine returns the last non-empty line of out, where Python puts the
// exception of a failed probe.
func lastLine(out []byte) string {
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return "no output"
	}
	return string(out[bytes.LastIndexByte(out, '\n')+1:])
}

// torchCondition implements the testscript condition "torch": true when
// torchPython finds torch; when it is missing and CI=true in the environment
// it returns an error (a missing torch fails CI, never skips there).
func torchCondition() (bool, error) {
	path, reason := torchPython()
	if path != "" {
		return true, nil
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		return false, fmt.Errorf("torch condition: CI=true and %s (apt-get install python3-torch)", reason)
	}
	return false, nil
}

func TestTorchCondition(t *testing.T) {
	ok, err := torchCondition()
	if err != nil {
		t.Fatal(err)
	}
	path, reason := torchPython()
	if !ok {
		t.Skipf("torch tests are skipped: %s", reason)
	}
	if path == "" || reason != "" {
		t.Errorf("torchPython() = %q, %q; want a path and no reason when torchCondition() = true", path, reason)
	}
}

func TestProbeTorchMissing(t *testing.T) {
	tests := []struct{ name, python string }{
		{"no such file", "/nonexistent/python3"},
		{"not python", "/bin/false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if path, reason := probeTorch(tt.python); path != "" || reason == "" {
				t.Errorf("probeTorch(%q) = %q, %q; want no path and a reason", tt.python, path, reason)
			}
		})
	}
}
