//go:build linux

package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
)

// holdRank publishes args[0] host buffers and keeps them, prints "held",
// and exits when its stdin closes.
func holdRank(args []string) int {
	n, _ := strconv.Atoi(args[0])
	c, err := ClientFromEnv(0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(WithClient(context.Background(), c), time.Minute)
	defer cancel()
	for range n {
		b, err := c.NewBuffer(4096)
		if err == nil {
			_, err = b.Publish(ctx)
			b.free()
		}
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
	}
	fmt.Println("held")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	c.mu.Lock()
	c.published = nil // exit at once: the broker frees them
	c.mu.Unlock()
	return 0
}

// floodRank puts args[0] small values on an unbounded queue, gets them all
// back, makes one more round trip (so that the broker has finished with
// the last Get), prints "drained", and exits when its stdin closes.
func floodRank(args []string) int {
	n, _ := strconv.Atoi(args[0])
	c, err := ClientFromEnv(0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(WithClient(context.Background(), c), 2*time.Minute)
	defer cancel()
	q := Queue[int]{ID: 600}
	for i := 0; err == nil && i < n; i++ {
		err = q.Put(ctx, i)
	}
	for got := 0; err == nil && got < n; {
		var vs []int
		vs, err = q.GetBatch(ctx, 1000)
		got += len(vs)
	}
	if err == nil {
		err = Queue[int]{ID: 601, Capacity: 1}.Put(ctx, 1)
	}
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("drained")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}

func TestFDBudget(t *testing.T) {
	for _, tc := range []struct {
		nofile uint64
		want   int
	}{{20000, 17500}, {1 << 20, 1<<20 - 1<<17}, {1024, 768}, {700, 444}, {300, 150}} {
		if got := fdBudget(tc.nofile); got != tc.want {
			t.Errorf("fdBudget(%d) = %d; want %d", tc.nofile, got, tc.want)
		}
	}
	if got, want := DefaultLimits().TotalFDs, fdBudget(nofile()); got != want {
		t.Errorf("DefaultLimits().TotalFDs = %d; want %d, from RLIMIT_NOFILE %d", got, want, nofile())
	}
}

// setNofile sets this process's soft RLIMIT_NOFILE to n until the test
// ends.
func setNofile(t *testing.T, n uint64) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	})
}

// TestFDBudgetFromRlimit: the launcher's descriptor budget comes from its
// RLIMIT_NOFILE. One rank holds 300 buffers, another publishes until it is
// refused: each is far under its own quota (4,096), but together they
// reach the budget, and the second gets the limit error naming it. The
// launcher never runs out of descriptors: the channels carry on.
func TestFDBudgetFromRlimit(t *testing.T) {
	setNofile(t, 700)
	b := NewBroker(WithLimits(Limits{}))
	defer b.Close()
	if b.Limits().TotalFDs != 444 {
		t.Fatalf("TotalFDs = %d under RLIMIT_NOFILE 700; want 444", b.Limits().TotalFDs)
	}
	hold := testrank.Command("hold", "300")
	stdin, err := hold.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	parent, out := startOnChannel(t, hold)
	timer := time.AfterFunc(time.Minute, func() { _ = hold.Process.Kill() })
	defer timer.Stop()
	heldServed := make(chan error, 1)
	go func() { heldServed <- b.Serve(1, parent, hold.Process.Pid, nil) }()
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "held\n" {
		t.Fatalf("holding rank said %q, %v; want held", line, err)
	}

	lines, served := runRank(t, b, 0, "limits", "fds")
	want := "limit: true ipc: limit reached: rank 0: the launcher's descriptor budget is spent: all ranks' buffers keep 444 of its descriptors " +
		"(launcher-wide limit 444: RLIMIT_NOFILE 700 less a reserve for the launcher's own work; raise RLIMIT_NOFILE, or lower MPSPAWN_IPC_MAX_FDS so that the ranks share the budget)"
	if len(lines) != 2 || lines[0] != want || lines[1] != "after: <nil>" {
		t.Errorf("rank printed %q; want %q, then success", lines, want)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve(rank 0) = %v; want nil", err)
	}
	stdin.Close()
	if err := hold.Wait(); err != nil {
		t.Errorf("holding rank: %v", err)
	}
	if err := <-heldServed; err != nil {
		t.Errorf("Serve(rank 1) = %v; want nil", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.all.fds != 0 || len(b.handles) != 0 {
		t.Errorf("after both ranks exited: %d descriptors kept, %d handles; want none", b.all.fds, len(b.handles))
	}
}

// TestTotalQueuedBytes: values put by all ranks together are bounded too:
// a rank under its own limit is refused once the launcher-wide one is
// reached, with the limit error naming it, and carries on once there is
// room.
func TestTotalQueuedBytes(t *testing.T) {
	b := NewBroker(WithLimits(Limits{QueuedBytes: 64 << 10, TotalQueuedBytes: 100 << 10}))
	defer b.Close()
	honest, end := serveHere(t, b, 1)
	defer end()
	ctx, cancel := context.WithTimeout(WithClient(context.Background(), honest), time.Minute)
	defer cancel()
	q := Queue[[10000]byte]{ID: 500, Capacity: 100}
	for range 6 {
		if err := q.Put(ctx, [10000]byte{}); err != nil {
			t.Fatal(err)
		}
	}
	lines, served := runRank(t, b, 0, "limits", "queued")
	wantSuffix := "bytes all ranks put wait in queues (launcher-wide limit 102400, for all ranks together; raise it with ipc.WithLimits or MPSPAWN_IPC_MAX_TOTAL_QUEUED_BYTES)"
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "limit: true ipc: limit reached: rank 0: ") || !strings.HasSuffix(lines[0], wantSuffix) || lines[1] != "after: <nil>" {
		t.Errorf("rank printed %q; want the refusal naming %q, then success", lines, wantSuffix)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve() = %v; want nil", err)
	}
	for range 6 {
		if _, err := q.Get(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOutOfFDsRootCause: when the reader cannot take the descriptors sent
// with a frame, being out of descriptors itself, the error says so, and
// does not call the frame malformed (the sender is not at fault).
func TestOutOfFDsRootCause(t *testing.T) {
	parent, child := pair(t)
	files := []*os.File{memfd(t, "a"), memfd(t, "b"), memfd(t, "c")}
	if err := child.WriteFrame(Frame{Type: FrameRequest, ID: 1, Payload: []byte{1}, Files: files}); err != nil {
		t.Fatal(err)
	}
	// Every descriptor number below the limit taken: none is left.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	top := 0
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		top = max(top, n)
	}
	setNofile(t, uint64(top)+1)
	var fill []int
	for {
		fd, err := syscall.Dup(0)
		if err != nil {
			break
		}
		fill = append(fill, fd)
	}
	_, err = parent.ReadFrame()
	for _, fd := range fill {
		syscall.Close(fd)
	}
	if !errors.Is(err, ErrOutOfFDs) || errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), "could take no more (RLIMIT_NOFILE ") {
		t.Errorf("ReadFrame() = %v; want ErrOutOfFDs saying this process is out of descriptors, not ErrBadFrame", err)
	}
}

// TestQueueMemoryReturned: 200,000 values put and got leave the launcher's
// heap where it was: a drained queue keeps neither its values nor the
// backing array it grew to, though it lives on (nothing was marked done),
// and the memory is returned to the system.
func TestQueueMemoryReturned(t *testing.T) {
	if testing.Short() {
		t.Skip("200,000 values")
	}
	b := NewBroker()
	defer b.Close()
	baseHeap, _ := liveHeap(t)
	cmd := testrank.Command("flood", "200000")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	parent, out := startOnChannel(t, cmd)
	timer := time.AfterFunc(2*time.Minute, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	served := make(chan error, 1)
	go func() { served <- b.Serve(0, parent, cmd.Process.Pid, nil) }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "drained\n" {
		t.Fatalf("rank said %q, %v; want drained", line, err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms) // before any collection of the test's own
	kept := ms.HeapSys - ms.HeapReleased
	heap, _ := liveHeap(t)
	t.Logf("live heap %.1f MiB before, %.1f MiB once drained; heap memory kept from the system once drained %.1f MiB", mib(baseHeap), mib(heap), mib(kept))
	if heap > baseHeap+4<<20 {
		t.Errorf("live heap once the queue drained = %.1f MiB; want at most 4 MiB over the %.1f MiB before", mib(heap), mib(baseHeap))
	}
	if kept > baseHeap+16<<20 {
		t.Errorf("heap memory kept from the system once the queue drained = %.1f MiB; want it returned (at most 16 MiB over the live heap before, %.1f MiB)", mib(kept), mib(baseHeap))
	}
	b.mu.Lock()
	if q := b.queues[600]; q == nil || q.items != nil {
		t.Errorf("drained queue 600 = %+v; want it alive (200,000 values not done), its items nil", q)
	}
	b.mu.Unlock()
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("rank: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve() = %v", err)
	}
}
