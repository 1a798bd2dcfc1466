//go:build linux

package ipc

import (
	"errors"
	"io"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzReadFrame writes arbitrary bytes, with nfiles descriptors riding on
// the first byte, into a Pair and reads one frame: no panic, no hang, only
// the documented errors, and no descriptor left open.
func FuzzReadFrame(f *testing.F) {
	f.Add(frameHeader{Version: wireVersion, Type: FrameHello, Length: 3}.encode(), uint8(0))
	f.Add(append(frameHeader{Version: wireVersion, Type: FrameArgs, NFiles: 2, ID: 9, Length: 4}.encode(), "data"...), uint8(2))
	f.Add(append(frameHeader{Version: wireVersion, Type: FrameArgs, NFiles: 1}.encode(), "trailing"...), uint8(3))
	f.Add([]byte("MPS"), uint8(1))
	f.Add([]byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, nfiles uint8) {
		fd, err := unix.MemfdCreate("fuzz", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		mf := os.NewFile(uintptr(fd), "memfd")
		defer mf.Close()
		parent, w, err := Pair()
		if err != nil {
			t.Fatal(err)
		}
		parent.SetMaxPayload(1 << 20)
		base := countFDs(t)

		// The writer ends the stream when done; closing parent unblocks it
		// when the reader stops first.
		done := make(chan error, 1)
		go func() {
			err := writeAll(int(w.Fd()), data, repeat(fd, int(nfiles%(MaxFiles+4))))
			w.Close()
			done <- err
		}()
		fr, err := parent.ReadFrame()
		for _, f := range fr.Files {
			f.Close()
		}
		parent.Close()
		if werr := <-done; werr != nil && !errors.Is(werr, unix.EPIPE) && !errors.Is(werr, unix.ECONNRESET) {
			t.Fatalf("writing: %v", werr)
		}
		if err != nil && err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrBadFrame) {
			t.Fatalf("ReadFrame() = %v; want nil, EOF or ErrBadFrame", err)
		}
		// parent and w are closed: two descriptors fewer than at base.
		checkFDs(t, base-2)
	})
}

// writeAll sends data through the blocking socket fd, with fds on the first
// sendmsg.
func writeAll(fd int, data []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for len(data) > 0 {
		n, err := unix.SendmsgN(fd, data, oob, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		data, oob = data[n:], nil
	}
	return nil
}
