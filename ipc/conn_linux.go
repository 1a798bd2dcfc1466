//go:build linux

package ipc

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is one end of a control channel: a connected unix stream socket
// carrying frames. It is safe for one reader and any number of concurrent
// writers; Close, PeerCred, SetMaxPayload and the deadline setters may be
// called at any time.
//
// An error that leaves the stream out of step — a malformed frame, a frame
// read or written only in part, end of stream — breaks that direction for
// good: later calls return the same error. A deadline that expires before
// any byte of a frame moved leaves the Conn usable.
type Conn struct {
	sock       // the transport: a non-blocking stream socket
	maxPayload atomic.Int64
	cred       atomic.Pointer[unix.Ucred] // writer of the last frame read

	wmu  sync.Mutex // held for the whole of one frame's writes
	werr error      // sticky write error, guarded by wmu

	rmu  sync.Mutex // serialises readers
	rerr error      // sticky read error, guarded by rmu
	hdr  [headerSize]byte
	oob  []byte

	frameTimeout atomic.Int64 // see SetFrameTimeout; 0: none

	dmu     sync.Mutex // guards the read deadlines below and their setting
	readDL  time.Time  // the caller's read deadline
	frameDL time.Time  // the frame under way must be whole by then; zero between frames
}

// Ucred is a peer process's credentials as the kernel reports them; on
// Linux it is unix.Ucred, so that portable code can name it.
type Ucred = unix.Ucred

// oobSize fits MaxFiles descriptors and the sender's credentials; a frame
// with more descriptors is reported by the kernel as truncated.
var oobSize = unix.CmsgSpace(MaxFiles*4) + unix.CmsgSpace(unix.SizeofUcred)

// newConn returns a Conn that frames the stream socket fd, which it owns
// (Close closes it): it makes fd non-blocking and turns on SO_PASSCRED (see
// PeerCred). The socket is an os.File rather than a net.UnixConn so that
// programs using the package do not link package net, whose cgo resolver
// would make every Go API binary dynamically linked (and slower to start,
// once per rank).
func newConn(fd int, name string) (*Conn, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	// Best effort: without it PeerCred falls back to SO_PEERCRED.
	_ = setPassCred(fd)
	conn := &Conn{sock: sock{f: os.NewFile(uintptr(fd), name)}, oob: make([]byte, oobSize)}
	conn.maxPayload.Store(DefaultMaxPayload)
	return conn, nil
}

// FileConn returns a Conn on a duplicate of f, which must be a unix stream
// socket — typically the rank's inherited end of a [Pair]. f stays open
// and the caller closes it.
func FileConn(f *os.File) (*Conn, error) {
	if err := checkStreamSocket(f); err != nil {
		return nil, fmt.Errorf("ipc: file conn %s: %w", f.Name(), err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("ipc: file conn %s: %w", f.Name(), err)
	}
	fd := -1
	var opErr error
	if err := rc.Control(func(sysfd uintptr) {
		fd, opErr = unix.FcntlInt(sysfd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("ipc: file conn %s: %w", f.Name(), err)
	}
	if opErr != nil {
		return nil, fmt.Errorf("ipc: file conn %s: %w", f.Name(), os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", opErr))
	}
	c, err := newConn(fd, f.Name())
	if err != nil {
		return nil, fmt.Errorf("ipc: file conn %s: %w", f.Name(), err)
	}
	return c, nil
}

// checkStreamSocket reports whether f is an AF_UNIX SOCK_STREAM socket.
func checkStreamSocket(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var domain, typ int
	var opErr error
	err = rc.Control(func(fd uintptr) {
		if domain, opErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN); opErr == nil {
			typ, opErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		}
	})
	switch {
	case err != nil:
		return err
	case opErr != nil:
		return os.NewSyscallError("getsockopt", opErr)
	case domain != unix.AF_UNIX || typ != unix.SOCK_STREAM:
		return fmt.Errorf("not a unix stream socket (domain %d, type %d)", domain, typ)
	}
	return nil
}

// Pair creates a connected unix stream socket pair
// (socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC)). The parent end is
// returned as a Conn; child is the other end, to be inherited by a rank
// through exec.Cmd.ExtraFiles or os.ProcAttr.Files (which clear its
// close-on-exec flag in the child only). The caller closes child once the
// rank has started. Both ends have SO_PASSCRED set, so PeerCred on either
// side names the process that wrote the last frame.
func Pair() (parent *Conn, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("ipc: pair: %w", os.NewSyscallError("socketpair", err))
	}
	if err := setPassCred(fds[1]); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("ipc: pair: %w", err)
	}
	parent, err = newConn(fds[0], "ipc-parent")
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("ipc: pair: %w", err)
	}
	return parent, os.NewFile(uintptr(fds[1]), "ipc-child"), nil
}

// setPassCred turns on SO_PASSCRED on the socket fd.
func setPassCred(fd int) error {
	err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	return os.NewSyscallError("setsockopt SO_PASSCRED", err)
}

// SetMaxPayload sets the largest payload ReadFrame accepts; n <= 0 restores
// DefaultMaxPayload. A larger frame is rejected with ErrBadFrame. It limits
// reading only: WriteFrame sends any payload the header can describe and
// leaves the limit to the peer.
func (c *Conn) SetMaxPayload(n int) {
	if n <= 0 {
		n = DefaultMaxPayload
	}
	c.maxPayload.Store(int64(n))
}

// PeerCred returns the credentials of the peer. Once a frame has been read
// they are those the kernel attached to it (SCM_CREDENTIALS): the process
// that wrote the last frame read, at the time it wrote it. Before that they
// come from SO_PEERCRED, which for a Pair names the process that created
// the pair, on both ends.
func (c *Conn) PeerCred() (*unix.Ucred, error) {
	if cr := c.cred.Load(); cr != nil {
		cp := *cr
		return &cp, nil
	}
	rc, err := c.f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("ipc: peer cred: %w", err)
	}
	var cr *unix.Ucred
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		cr, opErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("ipc: peer cred: %w", c.closedErr(err))
	}
	if opErr != nil {
		return nil, fmt.Errorf("ipc: peer cred: %w", os.NewSyscallError("getsockopt SO_PEERCRED", opErr))
	}
	return cr, nil
}

// SetDeadline bounds ReadFrame and WriteFrame, as net.Conn.SetDeadline
// does; a zero t means no deadline. An expired deadline reads as
// os.ErrDeadlineExceeded.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	if err := c.f.SetWriteDeadline(t); err != nil {
		return fmt.Errorf("ipc: set deadline: %w", err)
	}
	return nil
}

// SetReadDeadline bounds ReadFrame; a zero t means no deadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.readDL = t
	if err := c.f.SetReadDeadline(earliest(t, c.frameDL)); err != nil {
		return fmt.Errorf("ipc: set read deadline: %w", err)
	}
	return nil
}

// SetFrameTimeout bounds how long ReadFrame waits for the rest of a frame
// once its first byte has arrived: a frame announced and left unfinished
// for longer is an error wrapping ErrBadFrame, and the Conn's read side is
// broken for good. d <= 0 means no bound (the default). The broker sets it
// on every rank's channel (Limits.FrameTimeout).
func (c *Conn) SetFrameTimeout(d time.Duration) {
	c.frameTimeout.Store(int64(max(d, 0)))
}

// beginFrame starts the frame timeout, once the first bytes of a frame
// have arrived and more must be waited for; it returns the frame's
// deadline, zero when there is no frame timeout.
func (c *Conn) beginFrame() time.Time {
	d := time.Duration(c.frameTimeout.Load())
	if d == 0 {
		return time.Time{}
	}
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.frameDL.IsZero() {
		c.frameDL = time.Now().Add(d)
		_ = c.f.SetReadDeadline(earliest(c.readDL, c.frameDL))
	}
	return c.frameDL
}

// endFrame ends the frame timeout; it reports whether the frame's own
// deadline (not the caller's) had passed.
func (c *Conn) endFrame() (expired bool) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.frameDL.IsZero() {
		return false
	}
	expired = !time.Now().Before(c.frameDL) && (c.readDL.IsZero() || c.frameDL.Before(c.readDL))
	c.frameDL = time.Time{}
	_ = c.f.SetReadDeadline(c.readDL)
	return expired
}

// earliest is the earlier of two deadlines, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// SetWriteDeadline bounds WriteFrame; a zero t means no deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if err := c.f.SetWriteDeadline(t); err != nil {
		return fmt.Errorf("ipc: set write deadline: %w", err)
	}
	return nil
}

// Close closes the socket. Blocked ReadFrame and WriteFrame calls return
// an error wrapping os.ErrClosed, as do later calls. Files of frames
// already read are not affected.
func (c *Conn) Close() error {
	if err := c.close(); err != nil {
		return fmt.Errorf("ipc: close: %w", err)
	}
	return nil
}
