//go:build linux

package job

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/rendezvous"
	"golang.org/x/sys/unix"
)

// recorder is the static rendezvous, recording what the launcher
// publishes and how it closes the run.
type recorder struct {
	*rendezvous.Job
	mu     sync.Mutex
	failed []rendezvous.Failure
	ended  []string
}

func (r *recorder) Fail(ctx context.Context, f rendezvous.Failure) (rendezvous.Failure, error) {
	r.mu.Lock()
	r.failed = append(r.failed, f)
	r.mu.Unlock()
	return r.Job.Fail(ctx, f)
}

func (r *recorder) End(ctx context.Context, status string) error {
	r.mu.Lock()
	r.ended = append(r.ended, status)
	r.mu.Unlock()
	return r.Job.End(ctx, status)
}

// TestRunRoundsCause: a round stopped for a cause the launcher found
// through its context (a GPU's XID error) is a failure: it is published to
// the other nodes with the cause, the run is closed as failed, and the
// job exits 1.
func TestRunRoundsCause(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	if err := unix.Mkfifo(ready, 0o600); err != nil {
		t.Fatal(err)
	}
	static, err := rendezvous.Static(rendezvous.Config{NNodes: 1, NProcPerNode: 1, MasterAddr: "127.0.0.1", MasterPort: 29500})
	if err != nil {
		t.Fatal(err)
	}
	rdzv := &recorder{Job: static}
	j := &Job{Path: testrank.Exe, Command: []string{testrank.Name, "block", ready}, Env: os.Environ(), RunID: "r",
		ScratchDir: dir, Options: launcher.Options{Stop: launcher.StopOptions{GracePeriod: 5 * time.Second}, Watchdog: launcher.WatchdogOptions{Timeout: time.Minute}}} // the bound, should the rank never start
	j.NProcPerNode = 1
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	go func() {
		if b, err := os.ReadFile(ready); err == nil && len(b) > 0 {
			cancel(gpuFault{})
		}
	}()
	defer func() { // unblock the reader, should the rank never have started
		if f, err := os.OpenFile(ready, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	}()
	out, err := j.RunRounds(ctx, rdzv, 1)
	if err != nil {
		t.Fatal(err)
	}
	a := out.Last()
	if len(out.Attempts) != 1 || a.RootCause == nil || a.RootCause.Cause != (gpuFault{}).Reason() || out.ExitCode() != 1 {
		t.Fatalf("attempts %d, root cause %+v, exit %d; want 1 attempt (no restart: the launcher's own context is done), the GPU's fault, 1",
			len(out.Attempts), a.RootCause, out.ExitCode())
	}
	if len(rdzv.failed) != 1 || rdzv.failed[0].Cause != (gpuFault{}).Reason() || rdzv.failed[0].Rank != -1 || len(rdzv.ended) != 1 || rdzv.ended[0] != "failed" {
		t.Errorf("published %+v, ended %q; want the GPU's fault once, then the run closed as failed", rdzv.failed, rdzv.ended)
	}
}

// gpuFault stands for package gpu's XID error: a cause with a Reason.
type gpuFault struct{}

func (gpuFault) Error() string {
	return "gpu: GPU 3 (GPU-x) reported XID 79: GPU has fallen off the bus"
}
func (gpuFault) Reason() string { return "GPU 3 (GPU-x) reported XID 79: GPU has fallen off the bus" }

// TestCauseInSummary: a job stopped from outside with a cause that has a
// Reason (a GPU's XID error) names it as the summary's root cause.
func TestCauseInSummary(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	specs := []launcher.Spec{helperSpec(0, "block", os.DevNull)}
	g, err := launcher.Start(ctx, specs, launcher.Options{Stop: launcher.StopOptions{GracePeriod: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	cancel(gpuFault{})
	res := waitResult(t, g)
	if !errors.Is(res.Cause, gpuFault{}) || res.ExitCode() != 1 {
		t.Fatalf("cause %v, exit code %d; want the GPU's fault, 1", res.Cause, res.ExitCode())
	}
	sum := Summarize(res, "h", "r")
	var b strings.Builder
	sum.WriteText(&b, "train.py")
	want := "Root Cause: GPU 3 (GPU-x) reported XID 79: GPU has fallen off the bus (mpspawn stopped the ranks)\n"
	if sum.Cause != (gpuFault{}).Reason() || !strings.Contains(b.String(), want) {
		t.Errorf("summary cause %q, text %q; want %q", sum.Cause, b.String(), want)
	}
}

// TestStopCause: a round stopped by another node's hang or timeout (a
// failure with a Cause) asks the Group for its ranks' stacks first
// (launcher.StacksFirst); one stopped by another node's rank failure, or a
// change of membership, does not. Either way the stop is the cause.
func TestStopCause(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stop   rendezvous.Stop
		stacks bool
	}{
		{"hang", rendezvous.Stop{Failure: &rendezvous.Failure{NodeRank: 1, Rank: -1, LocalRank: -1, ExitCode: 1, Cause: "hang: no output for 2s"}}, true},
		{"rank", rendezvous.Stop{Failure: &rendezvous.Failure{NodeRank: 1, Rank: 3, LocalRank: 1, ExitCode: 3}}, false},
		{"change", rendezvous.Stop{Reason: "a node joined"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := stopCause(tc.stop)
			var sf *launcher.StacksFirst
			var se *rendezvous.StopError
			if got := errors.As(err, &sf); got != tc.stacks {
				t.Errorf("stopCause(%+v) asks for stacks: %v; want %v", tc.stop, got, tc.stacks)
			}
			if !errors.As(err, &se) || se.Stop.Reason != tc.stop.Reason || se.Stop.Failure != tc.stop.Failure {
				t.Errorf("stopCause(%+v) = %v; want the stop as a *rendezvous.StopError", tc.stop, err)
			}
		})
	}
}
