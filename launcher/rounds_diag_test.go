//go:build linux

package launcher

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/launcher/diag"
	"github.com/mpspawn/mpspawn/rendezvous"
	"golang.org/x/sys/unix"
)

// firstWrite closes started on the first write it gets.
type firstWrite struct {
	once    sync.Once
	started chan struct{}
}

func (f *firstWrite) Write(p []byte) (int, error) {
	f.once.Do(func() { close(f.started) })
	return len(p), nil
}

// stuckInside says it started from a thread it starts inside
// stuck_in_allreduce: once the line is out, the main thread is there.
const stuckInside = `import threading
def stuck_in_allreduce():
    threading.Thread(target=print, args=("started",), kwargs={"flush": True}).start()
    threading.Event().wait()
stuck_in_allreduce()
`

// TestRemoteCauseStacks: a Group stopped by another node's hang (a
// StopError whose Failure has a Cause) takes its ranks' stacks before it
// stops them; one stopped by another node's rank failure does not.
func TestRemoteCauseStacks(t *testing.T) {
	dir := t.TempDir()
	python, _ := pythonStuck(t, dir)
	script := filepath.Join(dir, "inside.py")
	if err := os.WriteFile(script, []byte(stuckInside), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		f      rendezvous.Failure
		stacks bool
	}{
		{"hang", rendezvous.Failure{NodeRank: 1, Rank: -1, LocalRank: -1, ExitCode: 1, Cause: "hang: no output for 2s"}, true},
		{"rank", rendezvous.Failure{NodeRank: 1, Rank: 3, LocalRank: 1, ExitCode: 3}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			out := &firstWrite{started: make(chan struct{})}
			spec := pySpec(0, python, script)
			spec.Dir, spec.Stdout = dir, out
			g, err := Start(ctx, []Spec{spec}, Options{Stacks: true, GracePeriod: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-out.started: // the hook is in: site ran before the script
			case <-time.After(30 * time.Second):
				g.Stop(errors.New("test: the rank did not start"))
				waitResult(t, g)
				t.Fatal("the rank printed nothing within 30s")
			}
			stop := &rendezvous.StopError{Stop: rendezvous.Stop{Failure: &tc.f}}
			cancel(stop)
			res := waitResult(t, g)
			if !errors.Is(res.Cause, stop) || res.RootCause != -1 {
				t.Fatalf("cause = %v, root cause %d; want the stop, no rank", res.Cause, res.RootCause)
			}
			r := res.Ranks[0]
			st := r.Stack
			if got := st != nil && st.Kind == diag.StackPython && strings.Contains(st.Text, "in stuck_in_allreduce"); got != tc.stacks {
				t.Errorf("stack = %+v; want a Python stack in stuck_in_allreduce: %v", st, tc.stacks)
			}
			if !r.Stopped || r.Signal != syscall.SIGTERM {
				t.Errorf("rank: stopped %v, %s; want stopped by SIGTERM", r.Stopped, r.Status())
			}
		})
	}
}

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
		ScratchDir: dir, Options: Options{GracePeriod: 5 * time.Second, Timeout: time.Minute}} // the bound, should the rank never start
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
