//go:build linux

package ipc

import (
	"errors"
	"io"
	"testing"
)

// chunk is one forged sendmsg: bytes and how many copies of a memfd ride
// with them.
type chunk struct {
	data []byte
	nfds int
}

func header(mod func(*frameHeader)) []byte {
	h := frameHeader{Version: wireVersion, Type: FrameArgs, ID: 1}
	if mod != nil {
		mod(&h)
	}
	return h.encode()
}

func withReserved(b []byte, v byte) []byte { b[7] = v; return b }

// Forged input: every violation is an error wrapping the right sentinel,
// and every descriptor received with it is closed.
func TestReadFrameRejects(t *testing.T) {
	good := header(nil)
	for _, tc := range []struct {
		name   string
		max    int // SetMaxPayload; 0 for the default
		chunks []chunk
		want   error
	}{
		{"bad magic", 0, []chunk{{append([]byte("MPX"), good[3:]...), 0}}, ErrBadFrame},
		{"bad magic with files", 0, []chunk{{append([]byte("XPS"), header(func(h *frameHeader) { h.NFiles = 2 })[3:]...), 2}}, ErrBadFrame},
		{"unknown version", 0, []chunk{{header(func(h *frameHeader) { h.Version = 2 }), 0}}, ErrBadFrame},
		{"version zero", 0, []chunk{{header(func(h *frameHeader) { h.Version = 0 }), 0}}, ErrBadFrame},
		{"type zero", 0, []chunk{{header(func(h *frameHeader) { h.Type = 0 }), 0}}, ErrBadFrame},
		{"flags", 0, []chunk{{header(func(h *frameHeader) { h.Flags = 0x80 }), 1}}, ErrBadFrame},
		{"reserved", 0, []chunk{{withReserved(header(nil), 1), 0}}, ErrBadFrame},
		{"nfds over MaxFiles", 0, []chunk{{header(func(h *frameHeader) { h.NFiles = MaxFiles + 1 }), 0}}, ErrBadFrame},
		{"nfds 255 with 16 files", 0, []chunk{{header(func(h *frameHeader) { h.NFiles = 255 }), MaxFiles}}, ErrBadFrame},
		{"payload over limit", 10, []chunk{{header(func(h *frameHeader) { h.Length = 11 }), 0}}, ErrBadFrame},
		{"payload over default limit", 0, []chunk{{header(func(h *frameHeader) { h.Length = DefaultMaxPayload + 1; h.NFiles = 1 }), 1}}, ErrBadFrame},
		{"fewer files than announced", 0, []chunk{{header(func(h *frameHeader) { h.NFiles = 2 }), 1}}, ErrBadFrame},
		{"more files than announced", 0, []chunk{{header(func(h *frameHeader) { h.NFiles = 1 }), 2}}, ErrBadFrame},
		{"unannounced files", 0, []chunk{{header(nil), 3}}, ErrBadFrame},
		{"files spread over header", 0, []chunk{{good[:1], 1}, {good[1:9], 1}, {good[9:], 1}}, ErrBadFrame},
		{"control truncated", 0, []chunk{{header(func(h *frameHeader) { h.NFiles = MaxFiles }), MaxFiles + 1}}, ErrBadFrame},
		{"control truncated badly", 0, []chunk{{header(func(h *frameHeader) { h.NFiles = MaxFiles }), 200}}, ErrBadFrame},
		{"empty stream", 0, nil, io.EOF},
		{"eof in header", 0, []chunk{{good[:7], 0}}, io.ErrUnexpectedEOF},
		{"eof in header with files", 0, []chunk{{good[:7], 2}}, io.ErrUnexpectedEOF},
		{"eof in payload", 0, []chunk{{header(func(h *frameHeader) { h.Length = 100; h.NFiles = 3 }), 3}, {make([]byte, 50), 0}}, io.ErrUnexpectedEOF},
		{"eof before payload", 0, []chunk{{header(func(h *frameHeader) { h.Length = 1 << 20; h.NFiles = 1 }), 1}}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent, w := rawPair(t)
			mf := memfd(t, "forged")
			parent.SetMaxPayload(tc.max)
			for _, c := range tc.chunks {
				sendRaw(t, w, c.data, repeat(int(mf.Fd()), c.nfds)...)
			}
			w.Close()           // end of stream after the forged bytes
			base := countFDs(t) // descriptors in flight are not counted
			f, err := parent.ReadFrame()
			if !errors.Is(err, tc.want) {
				t.Fatalf("ReadFrame() = %v; want %v", err, tc.want)
			}
			if f.Files != nil || f.Payload != nil {
				t.Errorf("ReadFrame() returned %d files, %d payload bytes with an error", len(f.Files), len(f.Payload))
			}
			if tc.want == io.EOF && err != io.EOF {
				t.Errorf("ReadFrame() = %#v; want io.EOF itself", err)
			}
			checkFDs(t, base)
			// The stream is out of step: the error sticks.
			if _, err2 := parent.ReadFrame(); !errors.Is(err2, tc.want) {
				t.Errorf("second ReadFrame() = %v; want %v", err2, tc.want)
			}
		})
	}
}

// Descriptors sent with payload bytes are outside the protocol: the kernel
// drops them on the plain reads, and none stays open here.
func TestFilesWithPayloadDropped(t *testing.T) {
	parent, w := rawPair(t)
	mf := memfd(t, "stray")
	base := countFDs(t)
	sendRaw(t, w, header(func(h *frameHeader) { h.Length = 4 }))
	sendRaw(t, w, []byte("ab"), int(mf.Fd()), int(mf.Fd()))
	sendRaw(t, w, []byte("cd"), int(mf.Fd()))
	f, err := parent.ReadFrame()
	if err != nil {
		t.Fatalf("ReadFrame: %v", err)
	}
	if string(f.Payload) != "abcd" || f.Files != nil {
		t.Errorf("ReadFrame() = %q with %d files; want %q with none", f.Payload, len(f.Files), "abcd")
	}
	checkFDs(t, base)
}

// A peer that closes its end with frames of ours unread (a rank that exits
// before reading a last notice) ends the stream: its own frames are read,
// then io.EOF, not a connection reset that the launcher would report as a
// broken channel.
func TestPeerClosedWithUnreadFrames(t *testing.T) {
	parent, child := pair(t)
	if err := child.WriteFrame(Frame{Type: FrameResult, ID: 1, Payload: []byte("done")}); err != nil {
		t.Fatal(err)
	}
	if err := parent.WriteFrame(Frame{Type: FrameNotice, Payload: []byte("never read")}); err != nil {
		t.Fatal(err)
	}
	child.Close()
	if f, err := parent.ReadFrame(); err != nil || string(f.Payload) != "done" {
		t.Fatalf("ReadFrame() = %q, %v; want the peer's last frame", f.Payload, err)
	}
	if _, err := parent.ReadFrame(); err != io.EOF {
		t.Errorf("ReadFrame() after the peer closed with a frame unread = %v; want io.EOF", err)
	}
}
