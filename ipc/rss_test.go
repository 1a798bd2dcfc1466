//go:build linux

package ipc

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
)

// abuseRank is the rank of TestMemoryReclaimed: it publishes a blob and
// leaves it on a queue (so that waits for its holders wait), then sends
// args[0] waits for its holders with 49-day timeouts and args[1] Gets on
// as many distinct, empty queues, in rounds of 1000 closed by a request
// it waits for (so that the broker has handled each round). It reads,
// and drops, the refusals its limits earn. It prints "flooded", and
// exits when its stdin closes.
func abuseRank(args []string) int {
	waits, _ := strconv.Atoi(args[0])
	gets, _ := strconv.Atoi(args[1])
	conn, err := ConnFromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c := NewClient(conn, 0)
	ctx, cancel := context.WithTimeout(WithClient(context.Background(), c), 5*time.Minute)
	defer cancel()
	h, err := c.PublishBlob(ctx, []byte("held by a queue"))
	if err == nil {
		err = Queue[Handle]{ID: 1, Capacity: 1}.Put(ctx, h)
	}
	id := uint64(1) << 40 // ids the client does not wait for: their replies are dropped
	for i := 0; err == nil && i < waits+gets; i++ {
		id++
		var body []byte
		if i < waits {
			body = binary.LittleEndian.AppendUint32(appendHandle([]byte{opWaitUnheld}, h), ^uint32(0))
		} else {
			body = appendQueueRef([]byte{opGet}, queueRef{ID: id})
		}
		err = conn.WriteFrame(Frame{Type: FrameRequest, ID: id, Payload: body})
		if err == nil && i%1000 == 999 {
			_, err = c.request(ctx, appendHandle([]byte{opCheck}, h))
		}
	}
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("flooded")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	c.mu.Lock()
	c.published = nil // exit at once: the blob is the queue's
	c.mu.Unlock()
	return 0
}

// liveHeap returns the live heap after a collection that returns freed
// memory to the system, and the process's resident set size.
func liveHeap(t *testing.T) (heap, rss uint64) {
	t.Helper()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(status)) {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			rss = kb << 10
		}
	}
	return ms.HeapAlloc, rss
}

// TestMemoryReclaimed: a rank that asks for 100,000 waits with 49-day
// timers and 200,000 Gets on distinct queues is held to its limits while
// it lives, and once it has exited the launcher's live heap is back within
// 4 MiB of what it was before the rank started (before the limits, and
// the freeing of a rank's state at its exit, such a rank grew the
// launcher by 50-60 MB for good).
func TestMemoryReclaimed(t *testing.T) {
	if testing.Short() {
		t.Skip("300,000 requests")
	}
	b := NewBroker()
	defer b.Close()
	baseHeap, baseRSS := liveHeap(t)

	cmd := testrank.Command("abuse", "100000", "200000")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	parent, out := startOnChannel(t, cmd)
	timer := time.AfterFunc(5*time.Minute, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	served := make(chan error, 1)
	go func() { served <- b.Serve(0, parent, cmd.Process.Pid, nil) }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "flooded\n" {
		t.Fatalf("rank said %q, %v; want flooded", line, err)
	}
	b.mu.Lock()
	p := b.peers[0]
	pending, queues := p.pending, len(b.queues)
	b.mu.Unlock()
	if pending != b.limits.Pending || queues > b.limits.Queues+1 {
		t.Errorf("while the rank lives: %d requests wait, %d queues; want the limits (%d, at most %d)", pending, queues, b.limits.Pending, b.limits.Queues+1)
	}
	peakHeap, peakRSS := liveHeap(t)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("rank: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve() = %v", err)
	}
	heap, rss := liveHeap(t)
	t.Logf("live heap: %.1f MiB before, %.1f MiB with the rank's state, %.1f MiB after its exit (RSS %.1f, %.1f, %.1f MiB)",
		mib(baseHeap), mib(peakHeap), mib(heap), mib(baseRSS), mib(peakRSS), mib(rss))
	if heap > baseHeap+4<<20 {
		t.Errorf("live heap after the rank exited = %.1f MiB; want at most %.1f MiB (4 MiB over the %.1f MiB before it)", mib(heap), mib(baseHeap+4<<20), mib(baseHeap))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queues) != 1 { // the blob's
		t.Errorf("%d queues left after the rank exited; want 1", len(b.queues))
	}
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }
