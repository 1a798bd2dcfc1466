//go:build linux

package launcher

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/procfs"
	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/launcher/internal/contain"
)

// withReady gives each spec a pipe on fd 3 (the helper rank's readiness
// path testrank.ReadyFD) and returns a func that waits until every rank
// has written its ready line, returning the lines.
func withReady(t *testing.T, specs []Spec) func() []string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	for i := range specs {
		specs[i].ExtraFiles = []*os.File{w}
	}
	return func() []string {
		t.Helper()
		w.Close()
		defer r.Close()
		lines := make(chan []string, 1)
		go func() {
			var got []string
			sc := bufio.NewScanner(r)
			for len(got) < len(specs) && sc.Scan() {
				got = append(got, sc.Text())
			}
			lines <- got
		}()
		select {
		case got := <-lines:
			if len(got) != len(specs) {
				t.Fatalf("ready: got %d lines, want %d", len(got), len(specs))
			}
			return got
		case <-time.After(30 * time.Second):
			t.Fatal("ranks not ready after 30s")
			return nil
		}
	}
}

// waitResult waits for g with a bound.
func waitResult(t *testing.T, g *Group) *Result {
	t.Helper()
	done := make(chan *Result, 1)
	go func() { done <- g.Wait() }()
	select {
	case res := <-done:
		return res
	case <-time.After(60 * time.Second):
		t.Fatal("group did not end within 60s")
		return nil
	}
}

func TestAllSucceed(t *testing.T) {
	specs := make([]Spec, 4)
	for i := range specs {
		specs[i] = helperSpec(3-i, "exit", "0") // out of order on purpose
	}
	g, err := Start(context.Background(), specs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, g)
	if !res.Succeeded() || res.ExitCode() != 0 || res.RootCause != -1 {
		t.Fatalf("result = %+v; want success", res)
	}
	for i, r := range res.Ranks {
		if r.Rank != i || r.ExitCode != 0 || r.Pid == 0 {
			t.Errorf("Ranks[%d] = %+v; want rank %d exit 0", i, r, i)
		}
	}
}

func TestFirstFailureStopsSiblings(t *testing.T) {
	specs := []Spec{
		helperSpec(0, "block", os.DevNull),
		helperSpec(1, "block", os.DevNull),
		helperSpec(2, "block", os.DevNull),
		helperSpec(3, "exit", "3"),
	}
	g, err := Start(context.Background(), specs, Options{Stop: StopOptions{GracePeriod: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, g)
	if res.ExitCode() != 3 {
		t.Errorf("ExitCode() = %d; want 3", res.ExitCode())
	}
	if res.RootCause != 3 || res.Ranks[3].ExitCode != 3 || res.Ranks[3].Stopped {
		t.Fatalf("root cause = %d; want rank 3 exit 3, not stopped; ranks %+v", res.RootCause, res.Ranks)
	}
	for _, r := range res.Ranks[:3] {
		if !r.Stopped || r.Signal != syscall.SIGTERM {
			t.Errorf("rank %d = %s, stopped %v; want SIGTERM from the launcher", r.Rank, r.Status(), r.Stopped)
		}
	}
	if len(res.Failures) != 4 || res.Failures[0] != 3 {
		t.Errorf("Failures = %v; want all 4, root cause 3 first", res.Failures)
	}
}

func TestStoppedRankMayExitCleanly(t *testing.T) {
	specs := []Spec{helperSpec(0, "exit-on-signal", testrank.ReadyFD)}
	waitReady := withReady(t, specs)
	g, err := Start(context.Background(), specs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitReady()
	g.Stop(errors.New("test"))
	res := waitResult(t, g)
	if r := res.Ranks[0]; r.ExitCode != 0 || !r.Stopped || r.Failed() {
		t.Errorf("rank = %s stopped %v; want exit code 0, stopped", r.Status(), r.Stopped)
	}
	if len(res.Failures) != 0 {
		t.Errorf("Failures = %v; want none", res.Failures)
	}
}

func TestGraceThenKill(t *testing.T) {
	specs := []Spec{helperSpec(0, "ignore", testrank.ReadyFD, strconv.Itoa(int(syscall.SIGTERM)))}
	waitReady := withReady(t, specs)
	g, err := Start(context.Background(), specs, Options{Stop: StopOptions{GracePeriod: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	waitReady()
	g.Stop(errors.New("test stop"))
	res := waitResult(t, g)
	if res.Ranks[0].Signal != syscall.SIGKILL || !res.Ranks[0].Stopped {
		t.Errorf("rank ignoring SIGTERM = %s (stopped %v); want SIGKILL after grace", res.Ranks[0].Status(), res.Ranks[0].Stopped)
	}
	if res.ExitCode() != 1 || res.RootCause != -1 || res.Cause == nil {
		t.Errorf("result = exit %d root %d cause %v; want 1, -1, the stop cause", res.ExitCode(), res.RootCause, res.Cause)
	}
}

func TestContextCancelStopsRanks(t *testing.T) {
	specs := []Spec{helperSpec(0, "block", testrank.ReadyFD), helperSpec(1, "block", testrank.ReadyFD)}
	waitReady := withReady(t, specs)
	ctx, cancel := context.WithCancelCause(context.Background())
	g, err := Start(ctx, specs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitReady()
	cause := errors.New("caller gave up")
	cancel(cause)
	res := waitResult(t, g)
	if !errors.Is(res.Cause, cause) {
		t.Errorf("Cause = %v; want %v", res.Cause, cause)
	}
	for _, r := range res.Ranks {
		if r.Signal != syscall.SIGTERM {
			t.Errorf("rank %d = %s; want SIGTERM", r.Rank, r.Status())
		}
	}
}

func TestSignalForwarded(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2} {
		t.Run(SignalName(sig), func(t *testing.T) {
			// sleep(1) keeps default dispositions: it dies of the signal.
			specs := []Spec{sleepSpec(0), sleepSpec(1)}
			g, err := Start(context.Background(), specs, Options{})
			if err != nil {
				t.Fatal(err)
			}
			g.Signal(sig)
			res := waitResult(t, g)
			if res.ExitCode() != 128+int(sig) {
				t.Errorf("ExitCode() = %d; want %d", res.ExitCode(), 128+int(sig))
			}
			for _, r := range res.Ranks {
				if r.Signal != sig {
					t.Errorf("rank %d = %s; want %s", r.Rank, r.Status(), SignalName(sig))
				}
			}
		})
	}
}

func sleepSpec(rank int) Spec {
	return Spec{Rank: rank, Path: "/bin/sleep", Args: []string{"sleep", "1000"}}
}

func TestSecondSIGINTKills(t *testing.T) {
	specs := []Spec{helperSpec(0, "ignore", testrank.ReadyFD, strconv.Itoa(int(syscall.SIGINT)))}
	waitReady := withReady(t, specs)
	g, err := Start(context.Background(), specs, Options{Stop: StopOptions{GracePeriod: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	waitReady()
	g.Signal(syscall.SIGINT)
	g.Signal(syscall.SIGINT)
	res := waitResult(t, g)
	if res.Ranks[0].Signal != syscall.SIGKILL || res.ExitCode() != 130 {
		t.Errorf("after two SIGINTs: rank %s, exit %d; want SIGKILL, 130", res.Ranks[0].Status(), res.ExitCode())
	}
}

// pidGone waits, up to d, for pid to exit.
func pidGone(pid int, d time.Duration) bool { return proctest.WaitExit(pid, d) }

func TestStopKillsRankChildren(t *testing.T) {
	specs := []Spec{helperSpec(0, "family", testrank.ReadyFD), helperSpec(1, "block", testrank.ReadyFD)}
	waitReady := withReady(t, specs)
	g, err := Start(context.Background(), specs, Options{Stop: StopOptions{GracePeriod: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	lines := waitReady()
	g.Stop(errors.New("test"))
	waitResult(t, g)
	for _, l := range lines {
		for _, f := range strings.Fields(l) {
			pid, _ := strconv.Atoi(f)
			if !pidGone(pid, 5*time.Second) {
				t.Errorf("pid %d (from %q) still alive after the group ended", pid, l)
			}
		}
	}
}

func TestLeftoverChildrenKilledAtEnd(t *testing.T) {
	// The rank exits 0 but leaves a child (that ignores SIGTERM) behind.
	specs := []Spec{helperSpec(0, "family", testrank.ReadyFD, "0")}
	waitReady := withReady(t, specs)
	g, err := Start(context.Background(), specs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	lines := waitReady()
	res := waitResult(t, g)
	if !res.Succeeded() {
		t.Fatalf("result %+v; want success", res)
	}
	child, _ := strconv.Atoi(strings.Fields(lines[0])[1])
	if !pidGone(child, 5*time.Second) {
		t.Errorf("rank's child %d still alive after Wait", child)
	}
}

func TestAffinity(t *testing.T) {
	var out bytes.Buffer
	s := helperSpec(0, "affinity")
	s.CPUs = []int{0}
	s.Stdout = &syncBuffer{b: &out}
	g, err := Start(context.Background(), []Spec{s}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitResult(t, g)
	if got := strings.TrimSpace(out.String()); got != "0" {
		t.Errorf("Cpus_allowed_list = %q; want %q", got, "0")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// TestStartFailureLeavesNothing: when one rank cannot start, the ranks
// that did are killed and reaped before Start returns, and the error names
// the rank and why.
func TestStartFailureLeavesNothing(t *testing.T) {
	if _, err := contain.StartGuard(); err != nil { // a child of its own, for good
		t.Fatal(err)
	}
	kids := procfs.Children(os.Getpid())
	specs := []Spec{helperSpec(0, "block", os.DevNull), helperSpec(1, "block", os.DevNull), {Rank: 2, Path: "/nonexistent/program", Args: []string{"x"}}}
	g, err := Start(context.Background(), specs, Options{})
	if err == nil {
		waitResult(t, g)
		t.Fatal("Start with a missing program succeeded")
	}
	if !strings.Contains(err.Error(), "rank 2") || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Start error = %v; want one naming rank 2 and wrapping fs.ErrNotExist", err)
	}
	if after := procfs.Children(os.Getpid()); !slices.Equal(after, kids) {
		t.Errorf("children after a failed Start = %v; want %v (the ranks that started killed and reaped)", after, kids)
	}
}

func TestErrorFileRead(t *testing.T) {
	s := helperSpec(0, "errorfile", "0", "RuntimeError: boom")
	s.ErrorFile = t.TempDir() + "/error.json"
	s.Env = append(s.Env, "TORCHELASTIC_ERROR_FILE="+s.ErrorFile)
	g, err := Start(context.Background(), []Spec{s}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, g)
	ef := res.Ranks[0].ErrorFile
	if ef == nil || ef.Message != "RuntimeError: boom" || !strings.Contains(ef.Traceback, `File "train.py", line 7, in main`) || ef.Time.Unix() != 1700000000 {
		t.Fatalf("ErrorFile = %+v; want the message, traceback and time written", ef)
	}
	if res.ExitCode() != 1 {
		t.Errorf("ExitCode() = %d; want 1", res.ExitCode())
	}
}

var _ = fmt.Sprint
