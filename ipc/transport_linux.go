//go:build linux

package ipc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// sock is the one transport under both framings of the package: a
// non-blocking unix socket, waited for through the runtime's poller (so
// that deadlines apply), that sends bytes with descriptors attached
// (SCM_RIGHTS) and receives them with the sender's credentials. Conn frames
// a stream socket with it; PacketConn sends one message per packet of a
// SOCK_SEQPACKET socket. Nothing else in the package calls sendmsg(2) or
// recvmsg(2).
type sock struct {
	f      *os.File
	closed atomic.Bool // set by close before the wake-up, for closedErr
}

// sendmsg writes bufs with files attached to their first byte, and returns
// how many bytes went out. On a stream socket it writes on after a short
// write; a packet (SOCK_SEQPACKET) goes out whole or not at all. It holds
// each file's descriptor while it sends (syscall.RawConn.Control), so that
// a concurrent Close cannot release it; the caller keeps the files.
func (s *sock) sendmsg(bufs [][]byte, files []*os.File) (int, error) {
	sent := 0
	err := withFDs(files, make([]int, 0, len(files)), func(fds []int) error {
		var err error
		sent, err = s.send(bufs, fds)
		return err
	})
	return sent, err
}

// withFDs calls fn with the descriptors of files, holding each file's
// descriptor (syscall.RawConn.Control) so that a concurrent Close cannot
// release it while fn runs.
func withFDs(files []*os.File, fds []int, fn func(fds []int) error) error {
	if len(files) == 0 {
		return fn(fds)
	}
	rc, err := files[0].SyscallConn()
	if err != nil {
		return fmt.Errorf("file %s: %w", files[0].Name(), err)
	}
	var fnErr error
	if err := rc.Control(func(fd uintptr) {
		fnErr = withFDs(files[1:], append(fds, int(fd)), fn)
	}); err != nil {
		return fmt.Errorf("file %s: %w", files[0].Name(), err)
	}
	return fnErr
}

// send is sendmsg once the descriptors are held.
func (s *sock) send(bufs [][]byte, fds []int) (int, error) {
	rc, err := s.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	sent := 0
	var opErr error
	err = rc.Write(func(fd uintptr) bool {
		for first := true; first || sent < total; first = false {
			n, err := unix.SendmsgBuffers(int(fd), bufs, oob, nil, unix.MSG_NOSIGNAL)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false
			case err != nil:
				opErr = os.NewSyscallError("sendmsg", err)
				return true
			case n <= 0 && total > 0:
				opErr = io.ErrShortWrite
				return true
			}
			sent += n
			bufs = advance(bufs, n)
			oob = nil // the descriptors went with the first byte
		}
		return true
	})
	if err == nil {
		err = opErr
	}
	return sent, s.closedErr(err)
}

// advance drops the first n bytes of bufs.
func advance(bufs [][]byte, n int) [][]byte {
	for len(bufs) > 0 && n >= len(bufs[0]) {
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	if len(bufs) > 0 {
		bufs[0] = bufs[0][n:]
	}
	return bufs
}

// control is what arrived beside the bytes of one recvmsg: descriptors
// (close-on-exec, owned by the caller), the sender's credentials when the
// socket has SO_PASSCRED, and whether the kernel cut the control data
// (MSG_CTRUNC).
type control struct {
	fds       []int
	cred      *unix.Ucred
	truncated bool
}

// recvmsg receives into p, and into oob the control data, which it parses
// (see control); oob may be nil, and then the kernel closes whatever
// descriptors were sent. It waits through the poller, so that read
// deadlines apply. The descriptors are returned even with an error, for
// the caller to close.
func (s *sock) recvmsg(p, oob []byte) (int, control, error) {
	rc, err := s.f.SyscallConn()
	if err != nil {
		return 0, control{}, err
	}
	var n, oobn, flags int
	var opErr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, flags, _, opErr = unix.Recvmsg(int(fd), p, oob, unix.MSG_CMSG_CLOEXEC)
			if opErr != unix.EINTR {
				return opErr != unix.EAGAIN
			}
		}
	})
	if err == nil && opErr != nil {
		err = os.NewSyscallError("recvmsg", opErr)
	}
	if err != nil {
		return 0, control{}, s.closedErr(err)
	}
	if oobn == 0 {
		return n, control{truncated: flags&unix.MSG_CTRUNC != 0}, nil
	}
	ctl := parseControl(oob[:oobn])
	ctl.truncated = flags&unix.MSG_CTRUNC != 0
	return n, ctl, nil
}

// parseControl returns the descriptors of every SCM_RIGHTS message in b and
// the credentials of its SCM_CREDENTIALS message, if any. It keeps what it
// parsed before a malformed message, so that no descriptor goes unclosed.
func parseControl(b []byte) (ctl control) {
	for len(b) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(b)
		if err != nil {
			break
		}
		b = rest
		m := &unix.SocketControlMessage{Header: h, Data: data}
		switch {
		case h.Level != unix.SOL_SOCKET:
		case h.Type == unix.SCM_RIGHTS:
			if got, err := unix.ParseUnixRights(m); err == nil {
				ctl.fds = append(ctl.fds, got...)
			}
		case h.Type == unix.SCM_CREDENTIALS:
			if cr, err := unix.ParseUnixCredentials(m); err == nil && ctl.cred == nil {
				ctl.cred = cr
			}
		}
	}
	return ctl
}

// close closes the socket: blocked and later calls fail with an error
// wrapping os.ErrClosed.
func (s *sock) close() error {
	s.closed.Store(true) // before the wake-up, for closedErr
	return s.f.Close()
}

// closedErr returns os.ErrClosed for an error of an operation that close
// ended (the poller reports it in words of its own), and err otherwise.
func (s *sock) closedErr(err error) error {
	if err != nil && s.closed.Load() && !errors.Is(err, os.ErrClosed) {
		return os.ErrClosed
	}
	return err
}
