// Package slurmtest brings up what the scheduler tests need from Slurm: the
// scontrol oracle for node lists, and a real two-node cluster (munged,
// slurmctld and two slurmd on 127.0.0.1) under a test's temporary
// directory, stopped by pid when the test ends.
//
// Tests that need Slurm skip when it is not installed, except under CI=true,
// where a missing package fails the test (scripts/install-test-deps.sh
// installs it).
package slurmtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Require finds each program on PATH or in /usr/sbin and returns their
// paths in order. When one is missing it skips t, or fails it under CI=true.
func Require(t testing.TB, programs ...string) []string {
	t.Helper()
	paths := make([]string, len(programs))
	for i, p := range programs {
		path, err := exec.LookPath(p)
		if err != nil {
			if _, serr := os.Stat(filepath.Join("/usr/sbin", p)); serr == nil {
				path, err = filepath.Join("/usr/sbin", p), nil
			}
		}
		if err != nil {
			Missing(t, fmt.Sprintf("%s not installed (Debian: slurmctld slurmd slurm-client munge; scripts/install-test-deps.sh)", p))
		}
		paths[i] = path
	}
	return paths
}

// Missing skips t for reason, or fails it under CI=true.
func Missing(t testing.TB, reason string) {
	t.Helper()
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("CI=true and %s", reason)
	}
	t.Skip(reason)
}

// ClientConf writes the smallest slurm.conf that lets Slurm's commands start
// without a cluster (scontrol show hostnames) into a temporary directory and
// returns its path. Without one they look for a configuration in DNS.
func ClientConf(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "slurm.conf")
	if err := os.WriteFile(path, []byte("ClusterName=hostlists\nSlurmctldHost=localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Hostnames runs `scontrol show hostnames list` with the configuration
// conf: the names Slurm expands list into, and whether scontrol called the
// list invalid.
func Hostnames(ctx context.Context, conf, list string) (hosts []string, invalid bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "scontrol", "--", "show", "hostnames", list) // "--": a list may start with "-"
	cmd.Env = append(os.Environ(), "SLURM_CONF="+conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, false, fmt.Errorf("scontrol show hostnames %q: %w: %s", list, err, stderr.String())
	}
	if s := stdout.String(); s != "" {
		hosts = strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	}
	return hosts, strings.Contains(stderr.String(), "Invalid hostlist"), nil
}
