//go:build linux

package ipc

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// payloadChunk is the most ReadFrame allocates for a payload before its
// bytes arrive, so a forged length cannot make it allocate the whole limit.
const payloadChunk = 1 << 20

// WriteFrame sends f: header, payload and f.Files (as SCM_RIGHTS) in one
// sendmsg(2), followed by further writes only for what a short write left.
// Concurrent calls never interleave their frames. A frame that cannot be
// encoded — zero type, more than MaxFiles files, a nil file, a payload over
// 4 GiB - 1 — is refused with an error wrapping ErrBadFrame before anything
// is sent. The files must stay open until WriteFrame returns; it does not
// close them.
func (c *Conn) WriteFrame(f Frame) error {
	hdr, err := encodeFrame(f)
	if err != nil {
		return fmt.Errorf("ipc: write %v frame: %w", f.Type, err)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	sent, err := c.sendmsg([][]byte{hdr, f.Payload}, f.Files)
	if err != nil {
		err = fmt.Errorf("ipc: write %v frame: %w", f.Type, err)
		if sent > 0 {
			c.werr = err // a partial frame is on the wire
		}
	}
	return err
}

// encodeFrame validates f and returns its encoded header.
func encodeFrame(f Frame) ([]byte, error) {
	if len(f.Files) > MaxFiles {
		return nil, fmt.Errorf("%w: %d files, at most %d allowed", ErrBadFrame, len(f.Files), MaxFiles)
	}
	if uint64(len(f.Payload)) > math.MaxUint32 {
		return nil, fmt.Errorf("%w: payload of %d bytes is too long", ErrBadFrame, len(f.Payload))
	}
	for i, file := range f.Files {
		if file == nil {
			return nil, fmt.Errorf("%w: file %d is nil", ErrBadFrame, i)
		}
	}
	h := frameHeader{
		Version: wireVersion,
		Type:    f.Type,
		ID:      f.ID,
		NFiles:  uint8(len(f.Files)),
		Length:  uint32(len(f.Payload)),
	}
	if err := h.validate(); err != nil {
		return nil, err
	}
	return h.encode(), nil
}

// ReadFrame reads the next frame. It returns io.EOF when the stream ends
// cleanly between frames, an error wrapping io.ErrUnexpectedEOF when it
// ends inside one, and an error wrapping ErrBadFrame for a malformed frame
// (see the package documentation). Whatever the error, every descriptor
// received with the failed frame has been closed. The files of a returned
// frame are close-on-exec and belong to the caller.
//
// One goroutine reads a Conn; should several call ReadFrame at once, the
// calls are serialised, each getting whole frames.
func (c *Conn) ReadFrame() (Frame, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rerr != nil {
		return Frame{}, c.rerr
	}
	f, n, err := c.readFrame()
	if err != nil && (n > 0 || !errors.Is(err, os.ErrDeadlineExceeded)) {
		c.rerr = err
	}
	return f, err
}

// readFrame reads one frame and reports how many header bytes it consumed.
func (c *Conn) readFrame() (Frame, int, error) {
	var h frameHeader
	fds, cred, n, err := c.readHeader()
	if err == nil {
		h, err = c.checkHeader(len(fds))
	}
	var payload []byte
	if err == nil {
		payload, err = c.readPayload(int(h.Length))
	}
	if c.endFrame() && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w: frame left unfinished for %v (%d of %d header bytes, payload of %d bytes announced)",
			ErrBadFrame, time.Duration(c.frameTimeout.Load()), n, headerSize, h.Length)
	}
	if err != nil {
		closeFDs(fds)
		if err == io.EOF {
			return Frame{}, n, err
		}
		return Frame{}, n, fmt.Errorf("ipc: read frame: %w", err)
	}
	if cred != nil && cred.Pid != 0 {
		c.cred.Store(cred)
	}
	return Frame{Type: h.Type, ID: h.ID, Payload: payload, Files: newFiles(fds)}, n, nil
}

// readHeader fills c.hdr with recvmsg(2), collecting the descriptors and
// the sender's credentials that arrive with it. It returns the descriptors
// even with an error, for the caller to close.
func (c *Conn) readHeader() (fds []int, cred *unix.Ucred, n int, err error) {
	for n < headerSize {
		m, ctl, err := c.recvmsg(c.hdr[n:], c.oob)
		fds = append(fds, ctl.fds...)
		if cred == nil {
			cred = ctl.cred
		}
		if errors.Is(err, unix.ECONNRESET) {
			// The peer closed its end with frames of ours unread (it
			// exited before reading a last notice, say): after every
			// byte it wrote, which the kernel delivers first, this is
			// its end of stream.
			err, m = nil, 0
		}
		if err != nil {
			return fds, cred, n, err
		}
		if ctl.truncated {
			return fds, cred, n + m, truncatedErr(len(ctl.fds))
		}
		if m == 0 {
			if n == 0 && len(fds) == 0 {
				return fds, cred, n, io.EOF
			}
			return fds, cred, n, io.ErrUnexpectedEOF
		}
		n += m
		if n < headerSize {
			c.beginFrame() // the rest of the header must follow in time
		}
	}
	return fds, cred, n, nil
}

// truncatedErr is the error of control data the kernel cut (MSG_CTRUNC)
// after got descriptors had been received: the sender attached more than
// the buffer holds (MaxFiles), or this process could not take them, being
// out of descriptors, which is no fault of the sender's.
func truncatedErr(got int) error {
	if got >= MaxFiles {
		return fmt.Errorf("%w: control data truncated: the sender attached more than %d descriptors", ErrBadFrame, MaxFiles)
	}
	return fmt.Errorf("%w: control data truncated: this process took %d of the descriptors sent with a frame and could take no more (RLIMIT_NOFILE %d); the sender is not at fault",
		ErrOutOfFDs, got, nofile())
}

// checkHeader validates c.hdr against the payload limit and the number of
// descriptors received with it.
func (c *Conn) checkHeader(nfds int) (frameHeader, error) {
	h, err := decodeHeader(c.hdr[:])
	limit := c.maxPayload.Load()
	switch {
	case err != nil:
		return frameHeader{}, err
	case int64(h.Length) > limit:
		return frameHeader{}, fmt.Errorf("%w: payload length %d exceeds limit %d", ErrBadFrame, h.Length, limit)
	case int(h.NFiles) != nfds:
		return frameHeader{}, fmt.Errorf("%w: header announces %d files, %d received", ErrBadFrame, h.NFiles, nfds)
	}
	return h, nil
}

// readPayload reads n payload bytes with plain reads, growing the buffer
// as bytes arrive rather than trusting n up front.
func (c *Conn) readPayload(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	c.beginFrame() // the payload must follow in time
	buf := make([]byte, 0, min(n, payloadChunk))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(n-len(buf), len(buf)))
		}
		m, err := c.f.Read(buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+m]
		if err == io.EOF || errors.Is(err, unix.ECONNRESET) {
			return nil, io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, c.closedErr(err)
		}
	}
	return buf, nil
}

// newFiles wraps received descriptors.
func newFiles(fds []int) []*os.File {
	if len(fds) == 0 {
		return nil
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), "ipc-fd-"+strconv.Itoa(fd))
	}
	return files
}

// closeFDs closes received descriptors that will not be returned.
func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
