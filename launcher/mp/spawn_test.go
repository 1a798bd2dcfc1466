//go:build linux

package mp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/place"
	"golang.org/x/sys/unix"
)

// The Go functions the tests spawn. The test binary is also the rank binary:
// TestMain calls Main first.
var (
	echoFn = Register("test.echo", func(ctx context.Context, r Rank, greeting string) (string, error) {
		return fmt.Sprintf("%s %d/%d local %d pid %d", greeting, r.Index, r.WorldSize, r.LocalRank, os.Getpid()), nil
	})
	noopFn = Register("test.noop", func(context.Context, Rank, struct{}) (struct{}, error) {
		return struct{}{}, nil
	})
	failFn = Register("test.fail", func(ctx context.Context, r Rank, a failArgs) (int, error) { // failFnLine
		if r.Index != a.Rank {
			<-ctx.Done() // the launcher stops the others with SIGTERM
			return 0, ctx.Err()
		}
		return failNow(a.Kind)
	})
	blockFn = Register("test.block", func(ctx context.Context, r Rank, _ int) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	})
	affinityFn = Register("test.affinity", func(ctx context.Context, r Rank, _ int) (string, error) {
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &set); err != nil {
			return "", err
		}
		var cpus []string
		for c := range 1024 {
			if set.IsSet(c) {
				cpus = append(cpus, strconv.Itoa(c))
			}
		}
		return fmt.Sprintf("affinity=%s rank.CPUs=%v env=%s", strings.Join(cpus, ","), r.CPUs, os.Getenv("PLACED")), nil
	})
)

type failArgs struct {
	Rank int
	Kind string // error, panic, exit, signal
}

// failNow fails the way kind says.
func failNow(kind string) (int, error) {
	switch kind {
	case "error":
		return 0, errors.New("rank gave up")
	case "panic":
		zero := len(kind) - len("panic")
		return 1 / zero, nil // PANIC LINE: integer divide by zero
	case "exit":
		os.Exit(3)
	case "signal":
		_ = unix.Kill(os.Getpid(), unix.SIGKILL)
		select {}
	}
	return 0, nil
}

// panicLine is "spawn_test.go:N" for the line failNow panics on.
func panicLine(t *testing.T) string { return markerLine(t, "spawn_test.go", "// PANIC LINE") }

// TestSpawnOrdered spawns 8 ranks and gets their results back ordered by
// rank, each from its own process.
func TestSpawnOrdered(t *testing.T) {
	s, err := Spawn(context.Background(), echoFn, 8, "hello", &Options{Stdout: discard{}, Stderr: discard{}})
	if err != nil {
		t.Fatal(err)
	}
	pids := s.Pids()
	got, err := s.Join()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 8 {
		t.Fatalf("Join = %d results; want 8", len(got))
	}
	for i, r := range got {
		want := fmt.Sprintf("hello %d/8 local %d pid %d", i, i, pids[i])
		if r != want {
			t.Errorf("result %d = %q; want %q", i, r, want)
		}
	}
}

// TestSpawnFailures checks every failure kind: the failing rank is the
// root cause, its siblings are stopped, and the RankError carries the
// rank's own message, panic value and stack.
func TestSpawnFailures(t *testing.T) {
	tests := []struct {
		kind     string
		message  string
		exitCode int
		signal   syscall.Signal
		stack    []string // substrings of RankError.Stack
		notStack []string // what it must not hold
		exit     string   // RankError.Exit()
	}{
		// A returned error names the registered function where it is
		// defined, and none of the package's own frames that called it.
		{kind: "error", message: "rank gave up", exitCode: 1, exit: "exit code 1",
			stack: []string{"returned by ", markerLine(t, "spawn_test.go", "// failFnLine")}, notStack: []string{"mp.serveRank", "mp.register", "goroutine "}},
		{kind: "panic", message: "panic: runtime error: integer divide by zero", exitCode: 1, exit: "exit code 1", stack: []string{"mp.failNow", panicLine(t)}},
		{kind: "exit", message: "exit code 3", exitCode: 3, exit: "exit code 3"},
		{kind: "signal", message: "signal 9 (SIGKILL)", exitCode: -1, signal: syscall.SIGKILL, exit: "signal 9 (SIGKILL)"},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			s, err := Spawn(context.Background(), failFn, 4, failArgs{Rank: 2, Kind: tt.kind}, &Options{Stdout: discard{}, Stderr: discard{}})
			if err != nil {
				t.Fatal(err)
			}
			pids := s.Pids()
			_, err = s.Join()
			var re *RankError
			if !errors.As(err, &re) {
				t.Fatalf("Join error = %v; want a *RankError", err)
			}
			if re.Rank != 2 || re.Pid != pids[2] || re.Message != tt.message || re.ExitCode != tt.exitCode || re.Signal != tt.signal {
				t.Errorf("RankError = rank %d pid %d %q exit %d signal %v; want rank 2 pid %d %q exit %d signal %v",
					re.Rank, re.Pid, re.Message, re.ExitCode, re.Signal, pids[2], tt.message, tt.exitCode, tt.signal)
			}
			if re.Panicked != (tt.kind == "panic") || tt.kind == "panic" && re.PanicValue != "runtime error: integer divide by zero" {
				t.Errorf("Panicked %v PanicValue %q; want %v", re.Panicked, re.PanicValue, tt.kind == "panic")
			}
			for _, want := range tt.stack {
				if !strings.Contains(re.Stack, want) {
					t.Errorf("stack does not name %q:\n%s", want, re.Stack)
				}
			}
			for _, bad := range tt.notStack {
				if strings.Contains(re.Stack, bad) {
					t.Errorf("stack names %q:\n%s", bad, re.Stack)
				}
			}
			if got := re.Exit(); got != tt.exit {
				t.Errorf("RankError.Exit() = %q; want %q", got, tt.exit)
			}
			for i, pid := range pids {
				if !proctest.WaitExit(pid, 0) {
					t.Errorf("rank %d (pid %d) still alive after Join", i, pid)
				}
			}
		})
	}
}

// TestSpawnCancel: cancelling ctx stops every rank, and Join says why.
func TestSpawnCancel(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	s, err := Spawn(ctx, blockFn, 3, 0, &Options{Stdout: discard{}, Stderr: discard{}})
	if err != nil {
		t.Fatal(err)
	}
	cause := errors.New("test is done")
	cancel(cause)
	_, err = s.Join()
	if !errors.Is(err, cause) {
		t.Fatalf("Join error = %v; want the cancel cause", err)
	}
	for _, pid := range s.Pids() {
		if !proctest.WaitExit(pid, 0) {
			t.Errorf("pid %d alive after Join", pid)
		}
	}
}

// TestSpawnPlacement: a placement's CPUs and environment reach the rank,
// which is bound before its function runs.
func TestSpawnPlacement(t *testing.T) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	cpu := -1
	for c := range 1024 {
		if set.IsSet(c) {
			cpu = c
			break
		}
	}
	opts := &Options{Stdout: discard{}, Stderr: discard{}, Ranks: []place.Rank{
		{CPUs: place.NewCPUSet(cpu), Env: map[string]string{"PLACED": "yes"}}, // MPSPAWN_CPUS comes from CPUs
	}}
	s, err := Spawn(context.Background(), affinityFn, 1, 0, opts)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Join()
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("affinity=%d rank.CPUs=%d env=yes", cpu, cpu); got[0] != want {
		t.Errorf("rank reports %q; want %q", got[0], want)
	}
}

// TestSpawnErrors: bad calls fail before anything starts.
func TestSpawnErrors(t *testing.T) {
	if _, err := Spawn(context.Background(), echoFn, 0, "x", nil); err == nil {
		t.Error("Spawn(0 ranks) succeeded")
	}
	if _, err := Spawn(context.Background(), Func[int, int]{name: "test.unregistered"}, 1, 0, nil); err == nil {
		t.Error("Spawn(unregistered) succeeded")
	}
}

func TestRegisterDuplicatePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("registering test.echo twice did not panic")
		}
	}()
	Register("test.echo", func(context.Context, Rank, int) (int, error) { return 0, nil })
}

// helperSpawner spawns blocking Go ranks, reports their pids on ready and
// waits: the parent in TestSpawnParentKilled.
func helperSpawner(ready string) int {
	s, err := Spawn(context.Background(), blockFn, 3, 0, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	testrank.WriteReady(ready, strings.Trim(fmt.Sprint(s.Pids()), "[]"))
	_ = s.Wait()
	return 0
}

// TestSpawnParentKilled: a parent killed with SIGKILL leaves no rank alive.
func TestSpawnParentKilled(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(testrank.Exe, testrank.ReadyFD)
	cmd.Args[0] = "spawner"
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("spawner reported no pids: %v", err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	for _, f := range strings.Fields(line) {
		pid, _ := strconv.Atoi(f)
		if !proctest.WaitExit(pid, time.Second) {
			_ = unix.Kill(pid, unix.SIGKILL)
			t.Errorf("rank pid %d outlived its SIGKILLed parent", pid)
		}
	}
}
