//go:build linux

package mp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/mpspawn/mpspawn/ipc"
	"golang.org/x/sys/unix"
)

// plainPoint and namedPoint are items of plain data and of data with a
// string, which travel differently (raw bytes; gob).
type plainPoint struct{ X, Y float64 }

type namedPoint struct {
	Name string
	P    plainPoint
}

// Pool task functions; items are ints.
var (
	squareFn = Register("test.square", func(_ context.Context, r Rank, x int) (int, error) {
		switch x {
		case -1:
			var p *struct{ n int }
			return p.n, nil // TASK PANIC LINE: nil pointer dereference
		case -2:
			_ = unix.Kill(os.Getpid(), unix.SIGKILL) // the worker dies under its task
			select {}
		case -3:
			return 0, errors.New("negative three")
		case -7:
			os.Exit(7) // the worker exits under its task
		}
		return x * x, nil
	})
	pidFn = Register("test.pid", func(_ context.Context, r Rank, _ int) (int, error) {
		return os.Getpid(), nil
	})
	powFn = Register2("test.pow", func(_ context.Context, r Rank, base, exp int) (int, error) {
		n := 1
		for range exp {
			n *= base
		}
		return n, nil
	})
	greetFn = Register("test.greet", func(_ context.Context, r Rank, who namedPoint) (string, error) {
		return fmt.Sprintf("hi %s at %v", who.Name, who.P.X), nil
	})
	waitFn = Register("test.wait", func(ctx context.Context, r Rank, _ int) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	})
)

func newTestPool(t *testing.T, workers int) *Pool {
	t.Helper()
	p, err := NewPool(workers, &Options{Stdout: discard{}, Stderr: discard{}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// workerPids asks the workers for their pids (one item per chunk, many
// items) until every worker has answered: a worker that is still starting
// may leave the others every item of one round.
func workerPids(t *testing.T, p *Pool) []int {
	t.Helper()
	var pids []int
	for range 100 {
		got, err := Map(context.Background(), p, pidFn, make([]int, 64*p.Size()), 1)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, got...)
		slices.Sort(pids)
		if pids = slices.Compact(pids); len(pids) >= p.Size() {
			return pids
		}
	}
	t.Fatalf("workers answering after 100 rounds: %v; want %d", pids, p.Size())
	return nil
}

func TestPoolMap(t *testing.T) {
	p := newTestPool(t, 3)
	items := make([]int, 1000)
	for i := range items {
		items[i] = i
	}
	for _, chunk := range []int{0, 1, 7, 1000} {
		got, err := Map(context.Background(), p, squareFn, items, chunk)
		if err != nil {
			t.Fatalf("Map(chunksize %d): %v", chunk, err)
		}
		for i, v := range got {
			if v != i*i {
				t.Fatalf("Map(chunksize %d)[%d] = %d; want %d", chunk, i, v, i*i)
			}
		}
	}
	if v, err := Apply(context.Background(), p, squareFn, 12); v != 144 || err != nil {
		t.Errorf("Apply(12) = %d, %v; want 144", v, err)
	}
	f := ApplyAsync(context.Background(), p, squareFn, 5)
	if v, err := f.Get(context.Background()); v != 25 || err != nil || !f.Ready() {
		t.Errorf("ApplyAsync(5).Get = %d, %v; want 25", v, err)
	}
	pows, err := Starmap(context.Background(), p, powFn, []Pair[int, int]{{2, 10}, {3, 3}}, 0)
	if err != nil || !slices.Equal(pows, []int{1024, 27}) {
		t.Errorf("Starmap = %v, %v; want [1024 27]", pows, err)
	}
	seen := map[int]bool{}
	for o := range MapUnordered(context.Background(), p, squareFn, items[:50], 3) {
		if o.Err != nil || o.Value != o.Index*o.Index || seen[o.Index] {
			t.Errorf("MapUnordered outcome %+v", o)
		}
		seen[o.Index] = true
	}
	if len(seen) != 50 {
		t.Errorf("MapUnordered yielded %d items; want 50", len(seen))
	}
	// Values with strings travel by gob, not as raw bytes.
	greetings, err := Map(context.Background(), p, greetFn, []namedPoint{{"a", plainPoint{X: 1}}, {"bb", plainPoint{X: 2.5}}}, 1)
	if err != nil || !slices.Equal(greetings, []string{"hi a at 1", "hi bb at 2.5"}) {
		t.Errorf("Map(greet) = %q, %v", greetings, err)
	}
	if got := DefaultChunksize(1000, 3); got != 84 {
		t.Errorf("DefaultChunksize(1000, 3) = %d; want 84 (as Python's Pool.map)", got)
	}
	p.Close()
	if _, err := Map(context.Background(), p, squareFn, items, 0); !errors.Is(err, ErrPoolClosed) {
		t.Errorf("Map after Close = %v; want ErrPoolClosed", err)
	}
	p.Join()
}

// TestPoolTaskPanic: a panicking task fails its item with the panic value
// and a stack naming the line; the worker and the pool live on.
func TestPoolTaskPanic(t *testing.T) {
	p := newTestPool(t, 1)
	before := workerPids(t, p)
	got, err := Map(context.Background(), p, squareFn, []int{2, -1, 3, -3}, 1)
	var re *RankError
	if !errors.As(err, &re) || !re.Panicked || !strings.Contains(re.PanicValue, "nil pointer dereference") {
		t.Fatalf("Map error = %v; want the panic of item 1", err)
	}
	if line := markerLine(t, "pool_test.go", "// TASK PANIC LINE"); !strings.Contains(re.Stack, line) {
		t.Errorf("stack does not name %s:\n%s", line, re.Stack)
	}
	if got[0] != 4 || got[2] != 9 {
		t.Errorf("results of the other items = %v; want 4 and 9 at 0 and 2", got)
	}
	if _, err := Apply(context.Background(), p, squareFn, -3); err == nil || !strings.Contains(err.Error(), "negative three") {
		t.Errorf("Apply(-3) = %v; want the returned error", err)
	}
	if after := workerPids(t, p); !slices.Equal(after, before) {
		t.Errorf("worker pids %v after a panic; want the same worker %v", after, before)
	}
	p.Close()
	p.Join()
}

// TestPoolWorkerDies: a worker killed under its task fails that task with
// ErrWorkerDied, is replaced, and the pool goes on; nothing hangs.
func TestPoolWorkerDies(t *testing.T) {
	p := newTestPool(t, 2)
	before := workerPids(t, p)
	_, err := Apply(context.Background(), p, squareFn, -2)
	var re *RankError
	if !errors.Is(err, ErrWorkerDied) || !errors.As(err, &re) || re.Signal != unix.SIGKILL {
		t.Fatalf("Apply(-2) = %v; want ErrWorkerDied by SIGKILL", err)
	}
	if !slices.Contains(before, re.Pid) || !proctest.WaitExit(re.Pid, 0) {
		t.Errorf("dead worker pid %d: want one of %v, gone", re.Pid, before)
	}
	got, err := Map(context.Background(), p, squareFn, []int{1, 2, 3, 4, 5, 6}, 1)
	if err != nil || !slices.Equal(got, []int{1, 4, 9, 16, 25, 36}) {
		t.Errorf("Map after a worker died = %v, %v", got, err)
	}
	after := workerPids(t, p)
	if len(after) != 2 || slices.Contains(after, re.Pid) {
		t.Errorf("workers after replacement %v; want 2, without %d", after, re.Pid)
	}
	// A worker killed while idle is replaced before it is given work.
	_ = unix.Kill(after[0], unix.SIGKILL)
	if !proctest.WaitExit(after[0], 5e9) {
		t.Fatal("idle worker did not die")
	}
	if got, err := Map(context.Background(), p, squareFn, []int{7, 8, 9, 10}, 1); err != nil || !slices.Equal(got, []int{49, 64, 81, 100}) {
		t.Errorf("Map after an idle worker died = %v, %v", got, err)
	}
	last := workerPids(t, p)
	p.Close()
	p.Join()
	for _, pid := range last {
		if !proctest.WaitExit(pid, 0) {
			t.Errorf("worker %d alive after Join", pid)
		}
	}
}

// TestPoolDeadWorkerFailsOnlyItsTask: a worker that dies fails the task it
// was running and nothing else: the task queued behind it on the same
// worker goes to the replacement. The error names the item.
func TestPoolDeadWorkerFailsOnlyItsTask(t *testing.T) {
	p := newTestPool(t, 1) // one worker: every task in flight is on it
	defer p.Join()
	defer p.Close()
	for run := range 4 {
		items := []int{1, 2, 3, 4, 5, -7, 6, 7, 8}
		got, err := Map(context.Background(), p, squareFn, items, 1)
		var me *MapError
		if !errors.As(err, &me) || len(me.Items) != 1 || me.Items[0].Index != 5 {
			t.Fatalf("run %d: Map error = %v; want a *MapError for item 5 only", run, err)
		}
		var re *RankError
		if !errors.Is(err, ErrWorkerDied) || !errors.As(err, &re) || re.ExitCode != 7 {
			t.Errorf("run %d: item 5's error = %v; want ErrWorkerDied with exit code 7", run, me.Items[0].Err)
		}
		if !strings.Contains(err.Error(), "item 5") {
			t.Errorf("run %d: error %q does not name item 5", run, err)
		}
		want := []int{1, 4, 9, 16, 25, 0, 36, 49, 64}
		if !slices.Equal(got, want) {
			t.Errorf("run %d: Map = %v; want %v", run, got, want)
		}
	}
}

// TestPoolItemErrors: every failed item is named by index in the
// MapError, in order; MapUnordered names the item in Outcome.Err.
func TestPoolItemErrors(t *testing.T) {
	p := newTestPool(t, 2)
	defer p.Join()
	defer p.Close()
	_, err := Map(context.Background(), p, squareFn, []int{-3, 1, -3, -3, 2}, 2)
	var me *MapError
	if !errors.As(err, &me) {
		t.Fatalf("Map error = %v; want a *MapError", err)
	}
	var idx []int
	for _, it := range me.Items {
		idx = append(idx, it.Index)
		var re *RankError
		if !errors.As(it, &re) || re.Message != "negative three" || re.Exit() != "" {
			t.Errorf("item %d: %v; want the returned error, its worker alive", it.Index, it.Err)
		}
	}
	if !slices.Equal(idx, []int{0, 2, 3}) {
		t.Errorf("failed items %v; want [0 2 3]", idx)
	}
	for o := range MapUnordered(context.Background(), p, squareFn, []int{4, -3}, 1) {
		var ie *ItemError
		switch {
		case o.Index == 0 && (o.Err != nil || o.Value != 16):
			t.Errorf("MapUnordered item 0 = %v, %v; want 16", o.Value, o.Err)
		case o.Index == 1 && (!errors.As(o.Err, &ie) || ie.Index != 1):
			t.Errorf("MapUnordered item 1 error = %v; want an *ItemError for item 1", o.Err)
		}
	}
}

// TestPoolTerminate stops busy workers at once; their work fails, and Join
// returns with every worker gone.
func TestPoolTerminate(t *testing.T) {
	p := newTestPool(t, 2)
	pids := workerPids(t, p)
	f := MapAsync(context.Background(), p, waitFn, []int{1, 2, 3, 4}, 1)
	p.Terminate()
	_, err := f.Get(context.Background())
	var me *MapError
	if !errors.As(err, &me) || len(me.Items) != 4 {
		t.Fatalf("Map running at Terminate = %v; want all 4 items failed", err)
	}
	for _, it := range me.Items {
		// A running item fails as its worker is stopped (its function sees
		// its context cancelled, or the worker dies); a queued one as closed.
		var re *RankError
		if !errors.Is(it, ErrPoolClosed) && !errors.Is(it, ErrWorkerDied) && !(errors.As(it, &re) && slices.Contains(pids, re.Pid)) {
			t.Errorf("item %d: %v; want ErrPoolClosed, ErrWorkerDied or its stopped worker's error", it.Index, it.Err)
		}
	}
	p.Join()
	for _, pid := range pids {
		if !proctest.WaitExit(pid, 0) {
			t.Errorf("worker %d alive after Terminate and Join", pid)
		}
	}
	if _, err := Apply(context.Background(), p, squareFn, 1); !errors.Is(err, ErrPoolClosed) {
		t.Errorf("Apply after Terminate = %v; want ErrPoolClosed", err)
	}
}

// markerLine is "file:N" for the line of file holding marker.
func markerLine(t *testing.T, file, marker string) string {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(string(src), "\n") {
		if strings.Contains(l, marker) && !strings.Contains(l, "markerLine(") {
			return fmt.Sprintf("%s:%d", file, i+1)
		}
	}
	t.Fatalf("no %q in %s", marker, file)
	return ""
}

// Pool tasks that share memory: each task publishes a buffer holding its
// item and puts the handle on a queue; another task reads them back.
var (
	bufQueue = ipc.Queue[ipc.Handle]{ID: 99}
	shareFn  = Register("test.share", func(ctx context.Context, r Rank, x int) (int, error) {
		c := ipc.ClientFrom(ctx)
		buf, err := c.NewBuffer(8)
		if err != nil {
			return 0, err
		}
		buf.Bytes()[0] = byte(x)
		h, err := buf.Publish(ctx)
		if err != nil {
			return 0, err
		}
		if err := bufQueue.Put(ctx, h); err != nil {
			return 0, err
		}
		return x, buf.Close(ctx)
	})
	readFn = Register("test.read", func(ctx context.Context, r Rank, _ int) (int, error) {
		c := ipc.ClientFrom(ctx)
		h, err := bufQueue.Get(ctx)
		if err != nil {
			return 0, err
		}
		m, err := c.Open(ctx, h)
		if err != nil {
			return 0, err
		}
		defer m.Close(ctx)
		return int(m.Bytes()[0]), nil
	})
)

func TestPoolIPC(t *testing.T) {
	p := newTestPool(t, 2)
	if _, err := Map(context.Background(), p, shareFn, []int{1, 2, 3, 4}, 1); err != nil {
		t.Fatal(err)
	}
	got, err := Map(context.Background(), p, readFn, make([]int, 4), 1)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, []int{1, 2, 3, 4}) {
		t.Errorf("tasks read %v from the shared buffers; want 1..4", got)
	}
	p.Close()
	p.Join()
}
