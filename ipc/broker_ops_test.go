//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpspawn/mpspawn/internal/f32"
)

// The commands a test rank (brokerRank) runs: one line on stdin is a
// command name and its arguments, the result is one line on stdout. Each
// command is a function of the rank's state and the words after its name.

type rankState struct {
	c      *Client
	held   map[string]*Mapping
	blobs  map[string]*Blob
	pool   *BufferPool
	buf    *Buffer    // a pooled buffer published by pputblock
	stop   func()     // cancels pputblock's put
	putErr chan error // pputblock's put's result
}

// A rankCommand is one command: its arguments, by name, and what it does
// with them (the words after the command's name).
type rankCommand struct {
	args string
	do   func(ctx context.Context, st *rankState, a []string) (string, error)
}

// rankCommands are the commands by name; each function's doc says what it
// does.
var rankCommands = map[string]rankCommand{
	"ping": {"", cmdPing},
	// Host buffers handed off through byteQueue.
	"make":     {"SIZE BYTE", cmdMake},
	"take":     {"", cmdTake},
	"close":    {"HANDLE", cmdClose},
	"open":     {"HANDLE", cmdOpen},
	"release":  {"HANDLE", cmdRelease},
	"writemap": {"HANDLE", cmdWriteMap},
	"maps":     {"", cmdMaps},
	"fds":      {"", cmdFDs},
	// Producer-owned blobs.
	"blob":     {"", cmdBlob},
	"takeblob": {"", cmdTakeBlob},
	"useblob":  {"HANDLE", cmdUseBlob},
	// The rank's buffer pool.
	"pool":      {"SIZE MAX", cmdPool},
	"pmake":     {"BYTE MS", cmdPMake},
	"pputblock": {"", cmdPPutBlock},
	"pclose":    {"", cmdPClose},
	"pcancel":   {"", cmdPCancel},
	// Kernel-counted descriptors (KindFD).
	"fdmake": {"TEXT", cmdFDMake},
	"openfd": {"HANDLE", cmdOpenFD},
	"fdtake": {"", cmdFDTake},
	// Small values on queue 7.
	"put":        {"N", cmdPut},
	"get":        {"N", cmdGet},
	"getbatch":   {"N", cmdGetBatch},
	"gettimeout": {"", cmdGetTimeout},
	// Publishes the broker must refuse.
	"unsealed": {"", cmdUnsealed},
	"badflags": {"", cmdBadFlags},
	// 64 MiB hand-offs on queue 64, for the benchmark.
	"make64": {"N fresh|pooled", cmdMake64},
	"take64": {"N", cmdTake64},
}

// run runs one command line, split into words.
func (st *rankState) run(ctx context.Context, cmd []string) (string, error) {
	if len(cmd) == 0 {
		return "", errors.New("empty command")
	}
	c, ok := rankCommands[cmd[0]]
	if !ok {
		return "", fmt.Errorf("unknown command %q", cmd[0])
	}
	if want := strings.Fields(c.args); len(cmd)-1 != len(want) {
		return "", fmt.Errorf("usage: %s", strings.Join(append(cmd[:1:1], want...), " "))
	}
	return c.do(ctx, st, cmd[1:])
}

// scan parses a command's arguments, one word each, into dst: *int,
// *string, or *Handle (in hex).
func scan(a []string, dst ...any) error {
	if len(a) != len(dst) {
		return fmt.Errorf("%d arguments; want %d", len(a), len(dst))
	}
	for i, d := range dst {
		var err error
		switch d := d.(type) {
		case *int:
			*d, err = strconv.Atoi(a[i])
		case *string:
			*d = a[i]
		case *Handle:
			*d, err = parseHandle(a[i])
		default:
			panic(fmt.Sprintf("scan: unsupported %T", d))
		}
		if err != nil {
			return fmt.Errorf("argument %d (%q): %w", i+1, a[i], err)
		}
	}
	return nil
}

// TestRankCommandsRefuse: the rank's interpreter answers a line it cannot
// run with an error, before the command touches its Client.
func TestRankCommandsRefuse(t *testing.T) {
	for _, tc := range []struct {
		name, line, want string
	}{
		{"empty", "", "empty command"},
		{"unknown", "frobnicate 1", `unknown command "frobnicate"`},
		{"too few", "make 4096", "usage: make SIZE BYTE"},
		{"too many", "take 1", "usage: take"},
		{"not a number", "make big 1", `argument 1 ("big")`},
		{"not a handle", "open zz", `argument 1 ("zz")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &rankState{held: map[string]*Mapping{}, blobs: map[string]*Blob{}}
			got, err := st.run(context.Background(), strings.Fields(tc.line))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%q) = %q, %v; want an error with %q", tc.line, got, err, tc.want)
			}
		})
	}
	st := &rankState{}
	if got, err := st.run(context.Background(), []string{"ping"}); got != "pong" || err != nil {
		t.Errorf("run(%q) = %q, %v; want pong", "ping", got, err)
	}
}

// Handles travel between test and ranks as their wire form in hex.
func hexHandle(h Handle) string { return fmt.Sprintf("%x", appendHandle(nil, h)) }

func parseHandle(s string) (Handle, error) {
	var b []byte
	if _, err := fmt.Sscanf(s, "%x", &b); err != nil {
		return Handle{}, err
	}
	return decodeHandle(b)
}

// byteQueue is the queue the tests pass handles and values through.
var byteQueue = Queue[message2]{ID: 42}

type message2 struct {
	H    Handle
	Note string
}

// ping: answers pong.
func cmdPing(ctx context.Context, st *rankState, a []string) (string, error) {
	return "pong", nil
}

// make SIZE BYTE: a buffer filled with BYTE, published and put on the
// queue; this rank releases it.
func cmdMake(ctx context.Context, st *rankState, a []string) (string, error) {
	var size, v int
	if err := scan(a, &size, &v); err != nil {
		return "", err
	}
	buf, err := st.c.NewBuffer(size)
	if err != nil {
		return "", err
	}
	return handOff(ctx, buf, byte(v), "made by "+strconv.Itoa(st.c.Rank()))
}

// handOff fills buf with v, publishes it, puts its handle on byteQueue
// with note, and releases it: the handle in hex.
func handOff(ctx context.Context, buf *Buffer, v byte, note string) (string, error) {
	for i := range buf.Bytes() {
		buf.Bytes()[i] = v
	}
	h, err := buf.Publish(ctx)
	if err != nil {
		return "", err
	}
	if err := byteQueue.Put(ctx, message2{H: h, Note: note}); err != nil {
		return "", err
	}
	return hexHandle(h), buf.Close(ctx)
}

// take: get from the queue, open, and report size, first byte, sum.
func cmdTake(ctx context.Context, st *rankState, a []string) (string, error) {
	m, err := byteQueue.Get(ctx)
	if err != nil {
		return "", err
	}
	mp, err := st.c.Open(ctx, m.H)
	if err != nil {
		return "", err
	}
	sum := 0
	for _, b := range mp.Bytes() {
		sum += int(b)
	}
	st.held[hexHandle(m.H)] = mp
	return fmt.Sprintf("%s size=%d sum=%d note=%q", hexHandle(m.H), len(mp.Bytes()), sum, m.Note), nil
}

// close HANDLE: unmap and release a mapping taken before.
func cmdClose(ctx context.Context, st *rankState, a []string) (string, error) {
	var key string
	if err := scan(a, &key); err != nil {
		return "", err
	}
	mp := st.held[key]
	if mp == nil {
		return "", errors.New("not held")
	}
	delete(st.held, key)
	return "closed", mp.Close(ctx)
}

// open HANDLE: map a handle named directly (not received through the
// queue).
func cmdOpen(ctx context.Context, st *rankState, a []string) (string, error) {
	var h Handle
	if err := scan(a, &h); err != nil {
		return "", err
	}
	mp, err := st.c.Open(ctx, h)
	if err != nil {
		return "", err
	}
	st.held[a[0]] = mp
	return fmt.Sprintf("size=%d", len(mp.Bytes())), nil
}

// release HANDLE: let go of a handle.
func cmdRelease(ctx context.Context, st *rankState, a []string) (string, error) {
	var h Handle
	if err := scan(a, &h); err != nil {
		return "", err
	}
	return "released", st.c.Release(ctx, h)
}

// writemap HANDLE: try to map a handle this rank holds writable.
func cmdWriteMap(ctx context.Context, st *rankState, a []string) (string, error) {
	var h Handle
	if err := scan(a, &h); err != nil {
		return "", err
	}
	f, err := st.c.OpenFD(ctx, h)
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := unix.Mmap(int(f.Fd()), 0, int(h.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return "refused: " + err.Error(), nil
	}
	unix.Munmap(data)
	return "writable", nil
}

// maps: how many buffers this rank has mapped.
func cmdMaps(ctx context.Context, st *rankState, a []string) (string, error) {
	b, err := os.ReadFile("/proc/self/maps")
	return strconv.Itoa(strings.Count(string(b), "memfd:mpspawn-buffer")), err
}

// fds: the number of open descriptors.
func cmdFDs(ctx context.Context, st *rankState, a []string) (string, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	return strconv.Itoa(len(ents)), err
}

// blob: publish a producer-owned blob and put it on the queue.
func cmdBlob(ctx context.Context, st *rankState, a []string) (string, error) {
	h, err := st.c.PublishBlob(ctx, []byte("cuda-ipc-handle-of-rank-"+strconv.Itoa(st.c.Rank())))
	if err != nil {
		return "", err
	}
	return hexHandle(h), byteQueue.Put(ctx, message2{H: h})
}

// takeblob: get a blob handle from the queue and open it.
func cmdTakeBlob(ctx context.Context, st *rankState, a []string) (string, error) {
	m, err := byteQueue.Get(ctx)
	if err != nil {
		return "", err
	}
	b, err := st.c.OpenBlob(ctx, m.H)
	if err != nil {
		return "", err
	}
	st.blobs[hexHandle(m.H)] = b
	return string(b.Bytes()), b.Valid(ctx)
}

// useblob HANDLE: check that what the blob names is still there.
func cmdUseBlob(ctx context.Context, st *rankState, a []string) (string, error) {
	var key string
	if err := scan(a, &key); err != nil {
		return "", err
	}
	b := st.blobs[key]
	if b == nil {
		return "", errors.New("not held")
	}
	return "valid", b.Valid(ctx)
}

// pool SIZE MAX: make the rank's buffer pool.
func cmdPool(ctx context.Context, st *rankState, a []string) (string, error) {
	var size, n int
	if err := scan(a, &size, &n); err != nil {
		return "", err
	}
	p, err := st.c.NewBufferPool(size, n)
	st.pool = p
	return "pool", err
}

// pmake BYTE MS: a pooled buffer filled with BYTE, got within MS ms,
// published and put on the queue; this rank releases it.
func cmdPMake(ctx context.Context, st *rankState, a []string) (string, error) {
	var v, ms int
	if err := scan(a, &v, &ms); err != nil {
		return "", err
	}
	gctx, cancel := context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
	defer cancel()
	buf, err := st.pool.Get(gctx)
	if err != nil {
		return "", err
	}
	return handOff(ctx, buf, byte(v), "pooled")
}

// pputblock: a pooled buffer published and put on queue 9 (capacity 1,
// full), in the background.
func cmdPPutBlock(ctx context.Context, st *rankState, a []string) (string, error) {
	buf, err := st.pool.Get(ctx)
	if err != nil {
		return "", err
	}
	h, err := buf.Publish(ctx)
	if err != nil {
		return "", err
	}
	q := Queue[Handle]{ID: 9, Capacity: 1}
	if err := q.Put(ctx, Handle{}); err != nil { // fills it
		return "", err
	}
	pctx, cancel := context.WithCancel(ctx)
	st.buf, st.stop, st.putErr = buf, cancel, make(chan error, 1)
	go func() { st.putErr <- q.Put(pctx, h) }()
	return "putting", nil
}

// pclose: close pputblock's buffer.
func cmdPClose(ctx context.Context, st *rankState, a []string) (string, error) {
	return "closed", st.buf.Close(ctx)
}

// pcancel: cancel pputblock's put and report its result.
func cmdPCancel(ctx context.Context, st *rankState, a []string) (string, error) {
	st.stop()
	return fmt.Sprint(<-st.putErr), nil
}

// fdmake TEXT: a memfd holding TEXT published as a kernel-counted
// descriptor (KindFD) and put on the queue; this rank lets go of it.
func cmdFDMake(ctx context.Context, st *rankState, a []string) (string, error) {
	var text string
	if err := scan(a, &text); err != nil {
		return "", err
	}
	fd, err := unix.MemfdCreate("vmm-export", unix.MFD_CLOEXEC)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), "vmm-export")
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		return "", err
	}
	h, err := st.c.PublishFD(ctx, f, int64(len(text)))
	if err != nil {
		return "", err
	}
	if err := byteQueue.Put(ctx, message2{H: h, Note: "fd"}); err != nil {
		return "", err
	}
	return hexHandle(h), st.c.Release(ctx, h)
}

// openfd HANDLE: ask the broker for a handle's descriptor directly.
func cmdOpenFD(ctx context.Context, st *rankState, a []string) (string, error) {
	var h Handle
	if err := scan(a, &h); err != nil {
		return "", err
	}
	f, err := st.c.OpenFD(ctx, h)
	if err != nil {
		return "", err
	}
	f.Close()
	return "opened", nil
}

// fdtake: get a KindFD handle from the queue, open it, read it, let go of
// it.
func cmdFDTake(ctx context.Context, st *rankState, a []string) (string, error) {
	m, err := byteQueue.Get(ctx)
	if err != nil {
		return "", err
	}
	f, err := st.c.OpenFD(ctx, m.H)
	if err != nil {
		return "", err
	}
	b := make([]byte, m.H.Size)
	_, err = f.ReadAt(b, 0)
	f.Close()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s %s", hexHandle(m.H), m.H.Kind, b), st.c.Release(ctx, m.H)
}

// smallQueue carries the small values of put and the gets.
var smallQueue = Queue[int]{ID: 7}

// put N: put N small values, 0 to N-1.
func cmdPut(ctx context.Context, st *rankState, a []string) (string, error) {
	var n int
	if err := scan(a, &n); err != nil {
		return "", err
	}
	for i := range n {
		if err := smallQueue.Put(ctx, i); err != nil {
			return "", err
		}
	}
	return "put", nil
}

// get N: get N values one by one and sum them.
func cmdGet(ctx context.Context, st *rankState, a []string) (string, error) {
	var n int
	if err := scan(a, &n); err != nil {
		return "", err
	}
	sum := 0
	for range n {
		v, err := smallQueue.Get(ctx)
		if err != nil {
			return "", err
		}
		sum += v
	}
	return strconv.Itoa(sum), nil
}

// getbatch N: get N values in batches and sum them.
func cmdGetBatch(ctx context.Context, st *rankState, a []string) (string, error) {
	var n int
	if err := scan(a, &n); err != nil {
		return "", err
	}
	sum := 0
	for got := 0; got < n; {
		vs, err := smallQueue.GetBatch(ctx, 4096)
		if err != nil {
			return "", err
		}
		for _, v := range vs {
			sum += v
		}
		got += len(vs)
	}
	return strconv.Itoa(sum), nil
}

// gettimeout: a Get on queue 7 that gives up after 50 ms.
func cmdGetTimeout(ctx context.Context, st *rankState, a []string) (string, error) {
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	v, err := smallQueue.Get(tctx)
	if err != nil {
		return "", err
	}
	return strconv.Itoa(v), nil
}

// unsealed: publish a memfd that is not sealed.
func cmdUnsealed(ctx context.Context, st *rankState, a []string) (string, error) {
	f, _, err := newMemfd(4096)
	if err != nil {
		return "", err
	}
	defer f.Close()
	_, err = st.c.publishFile(ctx, KindHost, f, 4096, 0)
	return "published", err
}

// badflags: publish a sealed buffer with an unknown publish flag.
func cmdBadFlags(ctx context.Context, st *rankState, a []string) (string, error) {
	f, data, err := newMemfd(4096)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := seal(f, &data); err != nil {
		return "", err
	}
	unix.Munmap(data)
	_, err = st.c.publishFile(ctx, KindHost, f, 4096, 0x80)
	return "published", err
}

// bigQueue carries the handles of make64 and take64.
var bigQueue = Queue[Handle]{ID: 64}

// make64 N fresh|pooled: N times, a 64 MiB buffer of float32 values put
// on queue 64.
func cmdMake64(ctx context.Context, st *rankState, a []string) (string, error) {
	var n int
	var mode string
	if err := scan(a, &n, &mode); err != nil {
		return "", err
	}
	get := func(context.Context) (*Buffer, error) { return st.c.NewBuffer(64 << 20) }
	if mode == "pooled" {
		p, err := st.c.NewBufferPool(64<<20, 3)
		if err != nil {
			return "", err
		}
		defer p.Close()
		get = p.Get
	}
	for i := range n {
		if err := put64(ctx, get, float32(i)); err != nil {
			return "", err
		}
	}
	return "made", nil
}

// put64 gets a buffer, fills it with v, and puts it on bigQueue.
func put64(ctx context.Context, get func(context.Context) (*Buffer, error), v float32) error {
	buf, err := get(ctx)
	if err != nil {
		return err
	}
	f32.Fill(f32.Of(buf.Bytes()), v)
	h, err := buf.Publish(ctx)
	if err != nil {
		return err
	}
	if err := bigQueue.Put(ctx, h); err != nil {
		return err
	}
	return buf.Close(ctx)
}

// take64 N: N times, get a buffer from queue 64, read it all, close it.
func cmdTake64(ctx context.Context, st *rankState, a []string) (string, error) {
	var n int
	if err := scan(a, &n); err != nil {
		return "", err
	}
	for i := range n {
		h, err := bigQueue.Get(ctx)
		if err != nil {
			return "", err
		}
		m, err := st.c.Open(ctx, h)
		if err != nil {
			return "", err
		}
		fs := f32.Of(m.Bytes())
		if sum := f32.Sum(fs); fs[0] != float32(i) || fs[len(fs)/2] != float32(i) || fs[len(fs)-1] != float32(i) || i > 0 && sum <= 0 {
			return "", fmt.Errorf("buffer %d holds %v (sum %v)", i, fs[0], sum)
		}
		if err := m.Close(ctx); err != nil {
			return "", err
		}
	}
	return "taken", nil
}
