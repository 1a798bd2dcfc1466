//go:build linux

package mp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
)

// helperForgetful is a binary that never calls Main: it notes its pid in
// $PIDS_FILE and spawns 3 ranks, which (being the same binary) do the same.
func helperForgetful() int {
	f, err := os.OpenFile(os.Getenv("PIDS_FILE"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Fprintln(f, os.Getpid())
	f.Close()
	s, err := Spawn(context.Background(), noopFn, 3, struct{}{}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	if err := s.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestForgottenMainFailsFast: a binary that forgets Main starts one
// generation of ranks, which refuse to spawn again; the parent's error
// gives the advice.
func TestForgottenMainFailsFast(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	if err := os.WriteFile(pids, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testrank.Exe)
	cmd.Args[0] = "forgetful"
	cmd.Env = append(os.Environ(), "PIDS_FILE="+pids)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("forgetful parent: %v; want exit code 1\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "call mp.Main() first thing in main") {
		t.Errorf("parent's error does not give the advice:\n%s", stderr.String())
	}
	data, _ := os.ReadFile(pids)
	// The first rank to refuse stops its siblings, perhaps before they got
	// as far: 2 to 4 processes, never a second generation.
	if n := len(strings.Fields(string(data))); n < 2 || n > 4 {
		t.Errorf("%d processes ran the forgetful main; want 2 to 4 (the parent and at most one generation of 3 ranks)", n)
	}
}

func TestSpawnAndNewPoolRefuseInsideARank(t *testing.T) {
	t.Setenv(envRole, roleRank)
	if _, err := Spawn(context.Background(), noopFn, 1, struct{}{}, nil); !errors.Is(err, ErrInsideRank) {
		t.Errorf("Spawn inside a rank = %v; want ErrInsideRank", err)
	}
	if _, err := NewPool(1, nil); !errors.Is(err, ErrInsideRank) {
		t.Errorf("NewPool inside a rank = %v; want ErrInsideRank", err)
	}
}

// helperPoolReplaced starts a one-worker pool, says so on ready, waits for
// a line on stdin (meanwhile its binary is replaced on disk), kills the
// worker under a task and runs one more task on the replacement.
func helperPoolReplaced(ready string) int {
	p, err := NewPool(1, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer p.Join()
	defer p.Close()
	testrank.WriteReady(ready, "ready")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	if _, err := Apply(context.Background(), p, squareFn, -7); !errors.Is(err, ErrWorkerDied) {
		fmt.Fprintf(os.Stderr, "Apply(-7) = %v; want ErrWorkerDied\n", err)
		return 1
	}
	v, err := Apply(context.Background(), p, squareFn, 3)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(v)
	return 0
}

// TestPoolReplacesWorkerFromItsOwnBinary: a worker replaced after the
// binary on disk was replaced runs the parent's binary (/proc/self/exe),
// not whatever the path now holds.
func TestPoolReplacesWorkerFromItsOwnBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "mp.test")
	copyFile(t, os.Args[0], bin)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, testrank.ReadyFD)
	cmd.Args[0] = "pool-replaced"
	cmd.ExtraFiles = []*os.File{w}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := bufio.NewReader(r).ReadString('\n'); err != nil {
		_ = cmd.Wait()
		t.Fatalf("pool never ready: %v\n%s", err, stderr.String())
	}
	// Replace the binary on disk, as a rebuild does.
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 42\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "go\n")
	stdin.Close()
	if err := cmd.Wait(); err != nil || strings.TrimSpace(stdout.String()) != "9" {
		t.Errorf("pool after its binary was replaced: %v, output %q; want 9\n%s", err, stdout.String(), stderr.String())
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}
