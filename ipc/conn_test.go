//go:build linux

package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
	"golang.org/x/sys/unix"
)

// payloadFor returns a payload of n bytes derived from id, so that a frame
// spliced from two others cannot pass for either.
func payloadFor(id uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(id*131 + uint64(i)*7 + uint64(i>>8))
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	parent, child := pair(t)
	for _, tc := range []struct {
		name  string
		frame Frame
	}{
		{"empty", Frame{Type: FrameHello}},
		{"one byte", Frame{Type: FrameArgs, ID: 1, Payload: []byte{0x42}}},
		{"1MiB", Frame{Type: FrameResult, ID: 1<<64 - 1, Payload: payloadFor(7, 1<<20)}},
		{"odd size", Frame{Type: FrameError, ID: 99, Payload: payloadFor(9, 65537)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { done <- child.WriteFrame(tc.frame) }()
			got, err := parent.ReadFrame()
			if werr := <-done; werr != nil {
				t.Fatalf("WriteFrame: %v", werr)
			}
			if err != nil {
				t.Fatalf("ReadFrame: %v", err)
			}
			if got.Type != tc.frame.Type || got.ID != tc.frame.ID || !bytes.Equal(got.Payload, tc.frame.Payload) {
				t.Errorf("ReadFrame() = {%v %d %d bytes}; want {%v %d %d bytes}",
					got.Type, got.ID, len(got.Payload), tc.frame.Type, tc.frame.ID, len(tc.frame.Payload))
			}
			if len(tc.frame.Payload) == 0 && got.Payload != nil {
				t.Errorf("ReadFrame().Payload = %q; want nil", got.Payload)
			}
			if got.Files != nil {
				t.Errorf("ReadFrame().Files = %v; want nil", got.Files)
			}
		})
	}
}

// Many goroutines write at once; the reader must get every frame whole.
func TestConcurrentWriters(t *testing.T) {
	parent, child := pair(t)
	const writers, perWriter = 8, 12
	sizes := []int{0, 1, 100, 64<<10 + 3, 1 << 20}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				id := uint64(w*perWriter + i + 1)
				f := Frame{Type: FrameRequest, ID: id, Payload: payloadFor(id, sizes[int(id)%len(sizes)])}
				if err := child.WriteFrame(f); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	seen := make(map[uint64]bool)
	for range writers * perWriter {
		f, err := parent.ReadFrame()
		if err != nil {
			t.Errorf("ReadFrame: %v", err)
			child.Close() // unblock the writers
			break
		}
		want := payloadFor(f.ID, sizes[int(f.ID)%len(sizes)])
		if f.Type != FrameRequest || seen[f.ID] || !bytes.Equal(f.Payload, want) {
			t.Errorf("frame %d: type %v, seen before %v, payload intact %v", f.ID, f.Type, seen[f.ID], bytes.Equal(f.Payload, want))
		}
		seen[f.ID] = true
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("WriteFrame: %v", err)
	}
	if len(seen) != writers*perWriter {
		t.Errorf("got %d distinct frames; want %d", len(seen), writers*perWriter)
	}
}

func TestFilePassing(t *testing.T) {
	parent, child := pair(t)
	mf := memfd(t, "shared buffer")
	tmp, err := os.CreateTemp(t.TempDir(), "ipc")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	if _, err := tmp.WriteString("temp file"); err != nil {
		t.Fatal(err)
	}
	files := []*os.File{mf, tmp}
	for len(files) < MaxFiles {
		files = append(files, mf)
	}
	base := countFDs(t)
	if err := child.WriteFrame(Frame{Type: FrameArgs, ID: 5, Payload: []byte("x"), Files: files}); err != nil {
		t.Fatalf("WriteFrame: %v", err)
	}
	got, err := parent.ReadFrame()
	if err != nil {
		t.Fatalf("ReadFrame: %v", err)
	}
	if len(got.Files) != MaxFiles {
		t.Fatalf("ReadFrame() has %d files; want %d", len(got.Files), MaxFiles)
	}
	for i, f := range got.Files {
		want := "shared buffer"
		if i == 1 {
			want = "temp file"
		}
		if s := readAllAt(t, f); s != want {
			t.Errorf("file %d holds %q; want %q", i, s, want)
		}
		if s := readAllAt(t, files[i]); s != want { // the same file, seen from the sender
			t.Errorf("sent file %d holds %q; want %q", i, s, want)
		}
	}
	// A write through the received memfd is seen through the sender's.
	if _, err := got.Files[0].WriteAt([]byte("SHARED"), 0); err != nil {
		t.Fatal(err)
	}
	if s := readAllAt(t, mf); s != "SHARED buffer" {
		t.Errorf("memfd after write through received fd = %q; want %q", s, "SHARED buffer")
	}
	for _, f := range got.Files {
		if err := f.Close(); err != nil {
			t.Errorf("Close received file: %v", err)
		}
	}
	checkFDs(t, base)
}

// Descriptors may arrive spread over the header's bytes; ReadFrame
// collects them all.
func TestFilesSplitOverHeader(t *testing.T) {
	parent, w := rawPair(t)
	mf := memfd(t, "split")
	hdr := frameHeader{Version: wireVersion, Type: FrameArgs, NFiles: 2, Length: 2}.encode()
	sendRaw(t, w, hdr[:5], int(mf.Fd()))
	sendRaw(t, w, hdr[5:], int(mf.Fd()))
	sendRaw(t, w, []byte("ok"))
	got, err := parent.ReadFrame()
	if err != nil {
		t.Fatalf("ReadFrame: %v", err)
	}
	if len(got.Files) != 2 || string(got.Payload) != "ok" {
		t.Fatalf("ReadFrame() = %d files, payload %q; want 2 files, %q", len(got.Files), got.Payload, "ok")
	}
	for _, f := range got.Files {
		if s := readAllAt(t, f); s != "split" {
			t.Errorf("received file holds %q; want %q", s, "split")
		}
		f.Close()
	}
}

// 10,000 frames with one descriptor each leave no descriptor behind.
func TestManyFilesNoLeak(t *testing.T) {
	parent, child := pair(t)
	mf := memfd(t, "x")
	const n = 10000
	base := countFDs(t)
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if err := child.WriteFrame(Frame{Type: FrameRequest, ID: uint64(i), Files: []*os.File{mf}}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := range n {
		f, err := parent.ReadFrame()
		if err != nil {
			child.Close()
			<-done
			t.Fatalf("ReadFrame %d: %v", i, err)
		}
		if f.ID != uint64(i) || len(f.Files) != 1 {
			t.Fatalf("frame %d: id %d with %d files; want id %d with 1", i, f.ID, len(f.Files), i)
		}
		if err := f.Files[0].Close(); err != nil {
			t.Fatalf("frame %d: Close: %v", i, err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("WriteFrame: %v", err)
	}
	checkFDs(t, base)
}

// The test binary re-executes itself as a rank holding the child end on fd
// 3; the kernel-attested pid of its reply is its own.
func TestChildProcess(t *testing.T) {
	parent, child, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	var stderr bytes.Buffer
	cmd := testrank.Command("echo")
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stderr = &stderr
	err = cmd.Start()
	child.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v; stderr:\n%s", err, stderr.String())
		}
	}()
	// Bound every wait; the helper's exit alone would end them with EOF.
	if err := parent.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Before any frame, SO_PEERCRED names the pair's creator: this process.
	if cred, err := parent.PeerCred(); err != nil || int(cred.Pid) != os.Getpid() {
		t.Errorf("PeerCred() before any frame = %+v, %v; want pid %d", cred, err, os.Getpid())
	}

	mf := memfd(t, "from parent")
	if err := parent.WriteFrame(Frame{Type: FrameRequest, ID: 42, Payload: []byte("ping"), Files: []*os.File{mf}}); err != nil {
		t.Fatalf("WriteFrame: %v", err)
	}
	reply, err := parent.ReadFrame()
	if err != nil {
		t.Fatalf("ReadFrame: %v; helper stderr:\n%s", err, stderr.String())
	}
	pid := cmd.Process.Pid
	want := fmt.Sprintf("pid=%d peer=%d ping from parent", pid, os.Getpid())
	if reply.Type != FrameReply || reply.ID != 42 || string(reply.Payload) != want {
		t.Errorf("ReadFrame() = {%v %d %q}; want {reply 42 %q}", reply.Type, reply.ID, reply.Payload, want)
	}
	if len(reply.Files) != 1 {
		t.Fatalf("reply has %d files; want 1", len(reply.Files))
	}
	if s := readAllAt(t, reply.Files[0]); s != "from parent" {
		t.Errorf("file passed back holds %q; want %q", s, "from parent")
	}
	reply.Files[0].Close()
	cred, err := parent.PeerCred()
	if err != nil {
		t.Fatalf("PeerCred: %v", err)
	}
	if int(cred.Pid) != pid || int(cred.Uid) != os.Getuid() {
		t.Errorf("PeerCred() = pid %d uid %d; want pid %d uid %d", cred.Pid, cred.Uid, pid, os.Getuid())
	}
	if err := parent.WriteFrame(Frame{Type: FrameClose}); err != nil {
		t.Fatalf("WriteFrame(close): %v", err)
	}
	if _, err := parent.ReadFrame(); err != io.EOF {
		t.Errorf("ReadFrame() after close = %v; want EOF", err)
	}
}

func TestWriteRefusesBadFrame(t *testing.T) {
	parent, child := pair(t)
	mf := memfd(t, "x")
	for _, tc := range []struct {
		name  string
		frame Frame
	}{
		{"zero type", Frame{}},
		{"too many files", Frame{Type: FrameArgs, Files: make([]*os.File, MaxFiles+1)}},
		{"nil file", Frame{Type: FrameArgs, Files: []*os.File{mf, nil}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := child.WriteFrame(tc.frame); !errors.Is(err, ErrBadFrame) {
				t.Errorf("WriteFrame(%s) = %v; want ErrBadFrame", tc.name, err)
			}
		})
	}
	// Nothing went out: the stream is still in step.
	if err := child.WriteFrame(Frame{Type: FrameHello, ID: 3}); err != nil {
		t.Fatal(err)
	}
	if f, err := parent.ReadFrame(); err != nil || f.ID != 3 {
		t.Errorf("ReadFrame() = id %d, %v; want id 3", f.ID, err)
	}
}

func TestReadDeadline(t *testing.T) {
	parent, child := pair(t)
	if err := parent.SetReadDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := parent.ReadFrame(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadFrame() = %v; want os.ErrDeadlineExceeded", err)
	}
	// Nothing was consumed, so the Conn is still usable.
	if err := parent.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := child.WriteFrame(Frame{Type: FrameHello, ID: 8}); err != nil {
		t.Fatal(err)
	}
	if f, err := parent.ReadFrame(); err != nil || f.ID != 8 {
		t.Errorf("ReadFrame() = id %d, %v; want id 8", f.ID, err)
	}
}

// A write that times out halfway leaves a partial frame on the wire; the
// Conn refuses further writes.
func TestWriteDeadlineMidFrame(t *testing.T) {
	_, child := pair(t) // nobody reads
	// Long enough that the first sendmsg, which fills the socket buffer
	// at once, runs before the deadline even on a loaded machine: a
	// deadline that expires before any byte moved is not sticky.
	if err := child.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	big := Frame{Type: FrameArgs, Payload: make([]byte, 16<<20)}
	err := child.WriteFrame(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteFrame(16 MiB, no reader) = %v; want os.ErrDeadlineExceeded", err)
	}
	if err := child.SetWriteDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err2 := child.WriteFrame(Frame{Type: FrameHello}); !errors.Is(err2, os.ErrDeadlineExceeded) {
		t.Errorf("WriteFrame after a partial frame = %v; want the sticky %v", err2, err)
	}
}

func TestCloseUnblocksReader(t *testing.T) {
	parent, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := parent.ReadFrame()
		done <- err
	}()
	if err := parent.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Errorf("ReadFrame() after Close = %v; want os.ErrClosed", err)
	}
}

func TestFileConnRejectsNonStream(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	d0, d1 := os.NewFile(uintptr(fds[0]), "dgram0"), os.NewFile(uintptr(fds[1]), "dgram1")
	defer d0.Close()
	defer d1.Close()
	for _, f := range []*os.File{r, d0} {
		c, err := FileConn(f)
		if err == nil {
			c.Close()
			t.Errorf("FileConn(%s) = nil error; want an error", f.Name())
			continue
		}
		if !strings.HasPrefix(err.Error(), "ipc: file conn") {
			t.Errorf("FileConn(%s) = %v; want an ipc: file conn error", f.Name(), err)
		}
	}
}
