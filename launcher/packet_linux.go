package launcher

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// packetConn is the launcher's end of the forkserver's SOCK_SEQPACKET
// socket: one message per packet, descriptors attached with SCM_RIGHTS. It
// waits through the runtime's poller, as a net.UnixConn would, but on an
// os.File, so that the launcher (and every Go API program, which links it)
// does not link package net.
type packetConn struct {
	f *os.File
}

// newPacketConn takes fd, making it non-blocking; Close closes it.
func newPacketConn(fd int, name string) (*packetConn, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	return &packetConn{f: os.NewFile(uintptr(fd), name)}, nil
}

// ReadMsg reads one packet into buf; a packet longer than buf is cut to it.
// It returns 0 and no error when the peer has closed its end.
func (c *packetConn) ReadMsg(buf []byte) (int, error) {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var opErr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, _, _, _, opErr = unix.Recvmsg(int(fd), buf, nil, unix.MSG_CMSG_CLOEXEC)
			if opErr != unix.EINTR {
				return opErr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return 0, err
	}
	if opErr != nil {
		return 0, os.NewSyscallError("recvmsg", opErr)
	}
	return n, nil
}

// WriteMsg sends b as one packet with oob (unix.UnixRights) attached. A
// packet over the socket's limit fails with an error wrapping
// unix.EMSGSIZE.
func (c *packetConn) WriteMsg(b, oob []byte) error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	err = rc.Write(func(fd uintptr) bool {
		for {
			opErr = unix.Sendmsg(int(fd), b, oob, nil, unix.MSG_NOSIGNAL)
			if opErr != unix.EINTR {
				return opErr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return err
	}
	if opErr != nil {
		return os.NewSyscallError("sendmsg", opErr)
	}
	return nil
}

// CloseWrite shuts down the sending side: the peer reads end of stream.
func (c *packetConn) CloseWrite() error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) { opErr = unix.Shutdown(int(fd), unix.SHUT_WR) }); err != nil {
		return err
	}
	return os.NewSyscallError("shutdown", opErr)
}

// Close closes the socket; a blocked ReadMsg returns an error.
func (c *packetConn) Close() error {
	if err := c.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}
