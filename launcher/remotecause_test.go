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

	"github.com/mpspawn/mpspawn/launcher/diag"
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
// cause that asks for stacks first, as the job makes of a StopError whose
// Failure has a Cause; see package job's TestStopCause) takes its ranks'
// stacks before it stops them; one stopped by another node's rank failure
// does not.
func TestRemoteCauseStacks(t *testing.T) {
	dir := t.TempDir()
	python, _ := pythonStuck(t, dir)
	script := filepath.Join(dir, "inside.py")
	if err := os.WriteFile(script, []byte(stuckInside), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		stop   error
		stacks bool
	}{
		{"hang", &StacksFirst{Err: errors.New("node 1: hang: no output for 2s")}, true},
		{"rank", errors.New("node 1: rank 3 failed with exit code 3"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			out := &firstWrite{started: make(chan struct{})}
			spec := pySpec(0, python, script)
			spec.Dir, spec.Stdout = dir, out
			g, err := Start(ctx, []Spec{spec}, Options{Stop: StopOptions{GracePeriod: 5 * time.Second}, Watchdog: WatchdogOptions{Stacks: true}})
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
			stop := tc.stop
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
