//go:build linux

package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
	"golang.org/x/sys/unix"
)

// The broker tests run real rank processes: the test binary as the helper
// rank in mode "broker" (brokerRank), attached to a Broker in the test
// through its control channel, as the launcher attaches its ranks. A rank
// reads one command line from stdin, runs it (rankCommands), prints one
// result line, and repeats until stdin closes; so the test drives the
// ranks step by step, without sleeps.

type testJob struct {
	t      testing.TB
	broker *Broker
	ranks  []*testRank
	// handled, if set before a rank starts, gets the op of every request
	// the broker has handled for that rank.
	handled chan byte
}

type testRank struct {
	rank   int
	cmd    *exec.Cmd
	stdin  *os.File
	out    *bufio.Reader
	served chan struct{}
}

func newTestJob(t testing.TB, n int) *testJob {
	j := &testJob{t: t, broker: NewBroker()}
	for i := range n {
		j.ranks = append(j.ranks, j.start(i))
	}
	t.Cleanup(func() {
		for _, r := range j.ranks {
			r.stdin.Close()
			_ = r.cmd.Process.Kill()
			_ = r.cmd.Wait()
			<-r.served
		}
		j.broker.Close()
	})
	return j
}

// start runs rank i and serves its requests with the broker until it exits.
func (j *testJob) start(i int) *testRank {
	cmd := testrank.Command("broker")
	cmd.Env = append(os.Environ(), "RANK="+strconv.Itoa(i))
	return j.startCmd(i, cmd)
}

// startCmd runs cmd as rank i, with its control channel on fd 3.
func (j *testJob) startCmd(i int, cmd *exec.Cmd) *testRank {
	t := j.t
	parent, child, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(cmd.Env, "MPSPAWN_CONTROL_FD=3")
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stderr = os.Stderr
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	cmd.Stdin, cmd.Stdout = inR, outW
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child.Close()
	inR.Close()
	outW.Close()
	r := &testRank{rank: i, cmd: cmd, stdin: inW, out: bufio.NewReader(outR), served: make(chan struct{})}
	if err := j.broker.Attach(i, parent); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.served)
		defer parent.Close()
		defer j.broker.Detach(i, parent)
		for {
			f, err := parent.ReadFrame()
			if err != nil {
				return
			}
			op := byte(0)
			if len(f.Payload) > 0 {
				op = f.Payload[0]
			}
			j.broker.Handle(i, f)
			if j.handled != nil {
				j.handled <- op
			}
		}
	}()
	return r
}

// do sends rank r a command and returns its result line.
func (j *testJob) do(r int, format string, args ...any) string {
	j.t.Helper()
	rk := j.ranks[r]
	if _, err := fmt.Fprintf(rk.stdin, format+"\n", args...); err != nil {
		j.t.Fatalf("rank %d: %v", r, err)
	}
	line, err := rk.out.ReadString('\n')
	if err != nil {
		j.t.Fatalf("rank %d: no answer to %q: %v", r, fmt.Sprintf(format, args...), err)
	}
	return strings.TrimSuffix(line, "\n")
}

// exit ends rank r and waits until the broker has detached it.
func (j *testJob) exit(r int) {
	rk := j.ranks[r]
	rk.stdin.Close()
	_ = rk.cmd.Wait()
	<-rk.served
}

// brokerRank is the rank side: commands on stdin, results on stdout.
func brokerRank() int {
	f := os.NewFile(3, "ipc")
	conn, err := FileConn(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	rank, _ := strconv.Atoi(os.Getenv("RANK"))
	c := NewClient(conn, rank)
	ctx := WithClient(context.Background(), c)
	st := &rankState{c: c, held: map[string]*Mapping{}, blobs: map[string]*Blob{}}
	defer func() {
		if st.pool != nil {
			st.pool.Close()
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		res, err := st.run(ctx, strings.Fields(sc.Text()))
		if err != nil {
			res = "error: " + err.Error()
			switch {
			case errors.Is(err, ErrProducerGone):
				res = "error: producer gone"
			case errors.Is(err, ErrBadHandle):
				res = "error: bad handle"
			}
		}
		fmt.Println(res)
	}
	for _, w := range c.Close(ctx, 2*time.Second) {
		fmt.Fprintln(os.Stderr, w)
	}
	return 0
}

// TestBufferOutlivesProducer: the producer creates and fills a buffer, puts
// its handle on a queue and exits; the consumer gets it after the
// producer's exit and reads the right bytes.
func TestBufferOutlivesProducer(t *testing.T) {
	j := newTestJob(t, 2)
	h := j.do(0, "make %d %d", 1<<20, 7)
	if strings.HasPrefix(h, "error") {
		t.Fatal(h)
	}
	j.exit(0)
	want := fmt.Sprintf("%s size=%d sum=%d note=%q", h, 1<<20, 7<<20, "made by 0")
	if got := j.do(1, "take"); got != want {
		t.Fatalf("consumer after the producer exited: %q; want %q", got, want)
	}
	if got := j.do(1, "close %s", h); got != "closed" {
		t.Fatal(got)
	}
	// Nobody holds it now: it is freed, and its handle is stale.
	if got := j.do(1, "open %s", h); got != "error: bad handle" {
		t.Errorf("open after the last release: %q; want a bad handle", got)
	}
	if leaks := j.broker.Close(); len(leaks) != 0 {
		t.Errorf("leaks: %q", leaks)
	}
}

// TestBufferPoolRecycles: a pooled buffer comes back to its producer once
// its reader has released it, and is handed out again with new content; at
// most MAX buffers are out at once; readers cannot write to it; its old
// handle is stale; a buffer still out outlives its producer.
func TestBufferPoolRecycles(t *testing.T) {
	j := newTestJob(t, 2)
	if got := j.do(0, "pool 4096 2"); got != "pool" {
		t.Fatal(got)
	}
	h1, h2 := j.do(0, "pmake 1 10000"), j.do(0, "pmake 2 10000")
	if strings.HasPrefix(h1, "error") || strings.HasPrefix(h2, "error") {
		t.Fatal(h1, h2)
	}
	// Both are out (queued): Get waits for one to come back, bounded.
	if got := j.do(0, "pmake 3 50"); got != "error: context deadline exceeded" {
		t.Fatalf("a third buffer from a pool of 2 with both out: %q", got)
	}
	if got := j.do(1, "take"); !strings.HasPrefix(got, h1+" size=4096 sum=4096 ") {
		t.Fatalf("take: %q", got)
	}
	if got := j.do(1, "writemap %s", h1); !strings.HasPrefix(got, "refused") {
		t.Errorf("a reader maps a pooled buffer writable: %q", got)
	}
	if got := j.do(1, "close %s", h1); got != "closed" {
		t.Fatal(got)
	}
	// Buffer 1 is back in the pool once the broker has told the producer:
	// this Get waits for that.
	h3 := j.do(0, "pmake 3 10000")
	if strings.HasPrefix(h3, "error") || h3 == h1 {
		t.Fatalf("pmake after a buffer came back: %q (first handle %s)", h3, h1)
	}
	if got := j.do(0, "maps"); got != "2" {
		t.Errorf("producer has %s buffers mapped after 3 hand-offs from a pool of 2; want 2 (reuse)", got)
	}
	if got := j.do(1, "open %s", h1); got != "error: bad handle" {
		t.Errorf("open of a recycled buffer's old handle: %q", got)
	}
	for _, want := range []struct{ h, sum string }{{h2, "8192"}, {h3, "12288"}} {
		if got := j.do(1, "take"); !strings.HasPrefix(got, want.h+" size=4096 sum="+want.sum+" ") {
			t.Fatalf("take: %q; want %s with sum %s", got, want.h, want.sum)
		}
		if got := j.do(1, "close %s", want.h); got != "closed" {
			t.Fatal(got)
		}
	}
	// The reader's mapping of buffer 1 served buffer 3: two mappings in all.
	if got := j.do(1, "maps"); got != "2" {
		t.Errorf("reader has %s buffers mapped after reading 3 that share 2 memfds; want 2", got)
	}
	h4 := j.do(0, "pmake 4 10000")
	j.exit(0)
	if got := j.do(1, "take"); !strings.HasPrefix(got, h4+" size=4096 sum=16384 ") {
		t.Fatalf("take after the producer exited: %q", got)
	}
	if got := j.do(1, "close %s", h4); got != "closed" {
		t.Fatal(got)
	}
	if leaks := j.broker.Close(); len(leaks) != 0 {
		t.Errorf("leaks: %q", leaks)
	}
}

// TestCancelledPutFrees: a handle whose only hold left is a put that is
// then cancelled is freed, and a pooled buffer comes back, as when a
// message naming it is got and released.
func TestCancelledPutFrees(t *testing.T) {
	// Room for every request of the test: the serving loop never blocks.
	j := &testJob{t: t, broker: NewBroker(), handled: make(chan byte, 1024)}
	j.ranks = []*testRank{j.start(0)}
	t.Cleanup(func() {
		r := j.ranks[0]
		r.stdin.Close()
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		<-r.served
		j.broker.Close()
	})
	if got := j.do(0, "pool 4096 1"); got != "pool" {
		t.Fatal(got)
	}
	if got := j.do(0, "pputblock"); got != "putting" {
		t.Fatal(got)
	}
	// Publish, the put that fills the queue (batched or not), then the
	// put that waits: once the broker has handled that one, close.
	for puts := 0; puts < 2; {
		if op := <-j.handled; op == opPut {
			puts++
		}
	}
	if got := j.do(0, "pclose"); got != "closed" {
		t.Fatal(got)
	}
	if got := j.do(0, "pcancel"); got != "context canceled" {
		t.Fatalf("the cancelled put returned %q", got)
	}
	// The only buffer of the pool must be back: nothing holds it now.
	if got := j.do(0, "pmake 1 10000"); strings.HasPrefix(got, "error") {
		t.Errorf("Get after the cancelled put: %q; want the buffer back", got)
	}
}

// TestFDKindOutlivesProducer: a kernel-counted descriptor (KindFD, as a
// CUDA VMM allocation exported as a POSIX fd) lives like a memfd: the
// consumer opens it after its producer exited; a rank never given it
// cannot; once released by all, its handle is stale.
func TestFDKindOutlivesProducer(t *testing.T) {
	j := newTestJob(t, 3)
	h := j.do(0, "fdmake exported-allocation")
	if strings.HasPrefix(h, "error") {
		t.Fatal(h)
	}
	if got := j.do(2, "openfd %s", h); got != "error: bad handle" {
		t.Errorf("a rank never given the descriptor opens it: %q", got)
	}
	j.exit(0)
	fd, _ := parseHandle(h)
	if got, want := j.do(1, "fdtake"), h+" "+fd.Kind.String()+" exported-allocation"; got != want {
		t.Fatalf("fdtake after the producer exited: %q; want %q", got, want)
	}
	if got := j.do(1, "release %s", h); got != "error: bad handle" {
		t.Errorf("release after the last holder let go: %q; want a bad handle", got)
	}
	if leaks := j.broker.Close(); len(leaks) != 0 {
		t.Errorf("leaks: %q", leaks)
	}
}

// TestPublishRefused: a host buffer must be sealed, or its producer could
// change or shrink it under its readers; a publish with a flag the broker
// does not know is refused, not half understood.
func TestPublishRefused(t *testing.T) {
	for _, tc := range []struct {
		cmd  string
		want string // in the refusal
	}{
		{"unsealed", "must be sealed"},        // an unsealed memfd
		{"badflags", "unknown publish flags"}, // flag 0x80
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			j := newTestJob(t, 1)
			if got := j.do(0, "%s", tc.cmd); !strings.Contains(got, tc.want) {
				t.Errorf("do(0, %q) = %q; want a refusal (%q)", tc.cmd, got, tc.want)
			}
		})
	}
}

// TestPythonClient: a Python rank using examples/python/mpspawn_ipc.py
// takes a handle a Go rank put on a queue, maps the buffer zero-copy and
// reads it, publishes a buffer of its own, and releases what it held.
func TestPythonClient(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("no python3")
	}
	j := newTestJob(t, 1)
	h := j.do(0, "make %d %d", 1<<16, 3)
	py := exec.Command("python3", "-c", `
import sys
sys.path.insert(0, "../examples/python")
from mpspawn_ipc import Client, BrokerError
c = Client.from_env()
handles, value = c.get(42)
mem = c.open(handles[0])
print(handles[0].raw.hex(), len(mem), sum(mem), flush=True)
mem.release()
c.release(handles[0])
try:
    c.release(handles[0])
except BrokerError as e:
    print("second release:", e.kind, flush=True)
mine = c.publish(b"from python")
print("published", mine.size, mine.kind, flush=True)
c.release(mine)
sys.stdin.read()
`)
	py.Env = os.Environ()
	r := j.startCmd(1, py)
	j.ranks = append(j.ranks, r)
	for _, want := range []string{
		fmt.Sprintf("%s %d %d", h, 1<<16, 3<<16),
		"second release: bad handle",
		"published 11 1",
	} {
		line, err := r.out.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != want {
			t.Fatalf("python rank said %q, %v; want %q", line, err, want)
		}
	}
	j.exit(1)
	if leaks := j.broker.Close(); len(leaks) != 0 {
		t.Errorf("leaks after the python rank: %q", leaks)
	}
}

// TestCancelledGetLosesNothing: a Get that gave up is dropped by the
// broker, so the next value goes to the next Get instead of vanishing.
func TestCancelledGetLosesNothing(t *testing.T) {
	j := newTestJob(t, 2)
	if got := j.do(1, "gettimeout"); got != "error: context deadline exceeded" {
		t.Fatalf("get on an empty queue: %q", got)
	}
	if got := j.do(0, "put 1"); got != "put" {
		t.Fatal(got)
	}
	if got := j.do(1, "get 1"); got != "0" {
		t.Errorf("get after a cancelled get = %q; want the value 0", got)
	}
}

// TestHandleSecurity: a rank can open only handles it was given; forged,
// stale and double-released handles are errors.
func TestHandleSecurity(t *testing.T) {
	j := newTestJob(t, 3)
	h := j.do(0, "make 4096 1")
	if got := j.do(2, "open %s", h); got != "error: bad handle" {
		t.Errorf("rank 2 opens a handle it was never given: %q", got)
	}
	hd, err := parseHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	forged := hd
	forged.Token[0] ^= 1
	if got := j.do(1, "open %s", hexHandle(forged)); got != "error: bad handle" {
		t.Errorf("forged token: %q", got)
	}
	if got := j.do(1, "take"); !strings.HasPrefix(got, h+" size=4096 sum=4096") {
		t.Fatalf("take: %q", got)
	}
	if got := j.do(1, "release %s", h); got != "released" {
		t.Errorf("release: %q", got)
	}
	if got := j.do(1, "release %s", h); got != "error: bad handle" {
		t.Errorf("second release: %q", got)
	}
}

// TestProducerOwned: holders of a producer-owned handle get
// ErrProducerGone once the producer has died; an orderly producer waits
// for its holders and names them when they do not let go.
func TestProducerOwned(t *testing.T) {
	j := newTestJob(t, 2)
	h := j.do(0, "blob")
	if got := j.do(1, "takeblob"); got != "cuda-ipc-handle-of-rank-0" {
		t.Fatalf("takeblob: %q", got)
	}
	if got := j.do(1, "useblob %s", h); got != "valid" {
		t.Fatalf("useblob while the producer lives: %q", got)
	}
	_ = j.ranks[0].cmd.Process.Kill() // the producer dies without waiting
	j.exit(0)
	if got := j.do(1, "useblob %s", h); got != "error: producer gone" {
		t.Errorf("useblob after the producer died: %q; want producer gone", got)
	}
	if got := j.do(1, "open %s", h); !strings.HasPrefix(got, "error") {
		t.Errorf("open after the producer died: %q", got)
	}
}

// TestNoFDLeak: 10,000 handle transfers leave every process's descriptor
// count unchanged.
func TestNoFDLeak(t *testing.T) {
	j := newTestJob(t, 2)
	n := 10000
	if testing.Short() {
		n = 200
	}
	countParent := func() int {
		ents, _ := os.ReadDir("/proc/self/fd")
		return len(ents)
	}
	before0, before1, beforeP := j.do(0, "fds"), j.do(1, "fds"), countParent()
	for range n {
		h := j.do(0, "make 4096 2")
		if got := j.do(1, "take"); !strings.HasPrefix(got, h) {
			t.Fatalf("take: %q", got)
		}
		if got := j.do(1, "close %s", h); got != "closed" {
			t.Fatal(got)
		}
	}
	// The test process may close descriptors of earlier tests meanwhile:
	// only a rise is a leak there.
	if a0, a1, aP := j.do(0, "fds"), j.do(1, "fds"), countParent(); a0 != before0 || a1 != before1 || aP > beforeP {
		t.Errorf("fds after %d transfers: producer %s→%s, consumer %s→%s, broker %d→%d", n, before0, a0, before1, a1, beforeP, aP)
	}
}

// TestQueueAcrossRanks: values put by one rank are got by another, in order.
func TestQueueAcrossRanks(t *testing.T) {
	j := newTestJob(t, 2)
	var wg sync.WaitGroup
	var got string
	wg.Go(func() { got = j.do(1, "get 1000") })
	if r := j.do(0, "put 1000"); r != "put" {
		t.Fatal(r)
	}
	wg.Wait()
	if got != strconv.Itoa(999*1000/2) {
		t.Errorf("sum of got values = %s; want %d", got, 999*1000/2)
	}
}

// BenchmarkQueueSmall: one small message (an int) through a Queue, from
// one rank process to another, per op; the producer Puts one by one, the
// consumer takes what is waiting with GetBatch.
func BenchmarkQueueSmall(b *testing.B) {
	j := newTestJob(b, 2)
	var wg sync.WaitGroup
	b.ResetTimer()
	var got string
	wg.Go(func() { got = j.do(1, "getbatch %d", b.N) })
	j.do(0, "put %d", b.N)
	wg.Wait()
	if got != strconv.Itoa((b.N-1)*b.N/2) {
		b.Fatalf("sum %s", got)
	}
}

// BenchmarkBufferHandoff64MiB: a rank creates a 64 MiB buffer, fills it
// with float32 values and puts its handle; another rank gets it and reads
// it all; per buffer. "pooled" takes the buffers from a BufferPool of 3
// (after the first three, each is one that came back), "fresh" makes a new
// one each time (fresh memory: the kernel zeroes every page first).
func BenchmarkBufferHandoff64MiB(b *testing.B) {
	for _, mode := range []string{"pooled", "fresh"} {
		b.Run(mode, func(b *testing.B) {
			j := newTestJob(b, 2)
			var wg sync.WaitGroup
			b.SetBytes(64 << 20)
			b.ResetTimer()
			var got string
			wg.Go(func() { got = j.do(1, "take64 %d", b.N) })
			if r := j.do(0, "make64 %d %s", b.N, mode); r != "made" {
				b.Fatal(r)
			}
			wg.Wait()
			if got != "taken" {
				b.Fatal(got)
			}
		})
	}
}

// TestMapCacheBounded: a rank keeps its mappings of pooled buffers after
// closing them, for their next hand-off, but no more than maxIdleMaps.
func TestMapCacheBounded(t *testing.T) {
	mapped := func() int {
		b, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "memfd:mpspawn-buffer")
	}
	before := mapped()
	var files []*os.File
	for range maxIdleMaps + 2 {
		f, data, err := newMemfd(4096)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		r := &region{f: f, data: data}
		if err := r.sealFuture(); err != nil {
			t.Fatal(err)
		}
		unix.Munmap(data)
		_, key, err := mapReadOnly(f, 4096)
		if err != nil || key == (fileID{}) {
			t.Fatalf("mapReadOnly of a pooled buffer: key %v, %v", key, err)
		}
		maps.done(key)
	}
	if got := mapped() - before; got != maxIdleMaps {
		t.Errorf("%d idle mappings kept; want %d", got, maxIdleMaps)
	}
	last := files[len(files)-1]
	_, key, err := mapReadOnly(last, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if got := mapped() - before; got != maxIdleMaps {
		t.Errorf("mapping a kept buffer again made a new mapping (%d kept)", got)
	}
	maps.done(key)
	for _, f := range files {
		f.Close()
	}
}

// TestMapCacheChecksFile: a kept mapping is used only for the very file it
// maps, even when another memfd has the same inode number (shmem inode
// numbers wrap): here a kept mapping of one buffer is filed under the key
// of another, and opening the other must not return it.
func TestMapCacheChecksFile(t *testing.T) {
	pooled := func(v byte) (*os.File, fileID) {
		f, data, err := newMemfd(4096)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		for i := range data {
			data[i] = v
		}
		r := &region{f: f, data: data}
		if err := r.sealFuture(); err != nil {
			t.Fatal(err)
		}
		unix.Munmap(data)
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		return f, fileID{st.Dev, st.Ino}
	}
	a, _ := pooled(1)
	b, keyB := pooled(2)
	dataA, keyA, err := mapReadOnly(a, 4096)
	if err != nil || dataA[0] != 1 {
		t.Fatal(err)
	}
	maps.mu.Lock() // file a's kept mapping under b's key: an inode number clash
	maps.maps[keyB] = maps.maps[keyA]
	delete(maps.maps, keyA)
	maps.mu.Unlock()
	maps.done(keyB)
	dataB, key, err := mapReadOnly(b, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if dataB[0] != 2 {
		t.Errorf("opening buffer b (2s) gave %d: the kept mapping of buffer a (1s)", dataB[0])
	}
	maps.done(key)
}
