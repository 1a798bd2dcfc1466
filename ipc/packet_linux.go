//go:build linux

package ipc

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// PacketConn is one end of a SOCK_SEQPACKET socket pair: one message per
// packet, descriptors attached to it (SCM_RIGHTS). The launcher talks to
// its forkserver over one (see docs/forkserver.md): a request is a packet,
// and the rank's descriptors travel with it. It waits through the
// runtime's poller, as a net.UnixConn would, but on an os.File, so that
// the launcher (and every Go API program, which links it) does not link
// package net. A PacketConn is safe for one reader and one writer at a
// time.
type PacketConn struct {
	sock // the transport: a non-blocking SOCK_SEQPACKET socket
}

// PacketPair creates a connected SOCK_SEQPACKET socket pair
// (SOCK_CLOEXEC). The parent end is returned as a PacketConn; child is the
// other end, for the process the caller starts, which the caller closes
// once that process has started.
func PacketPair(name string) (parent *PacketConn, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	return &PacketConn{sock{f: os.NewFile(uintptr(fds[0]), name)}}, os.NewFile(uintptr(fds[1]), name+"-child"), nil
}

// ReadPacket reads one packet into buf; a packet longer than buf is cut to
// it. Descriptors sent with it are not received (the kernel closes them):
// the peer of a PacketConn sends none. It returns 0 and no error when the
// peer has closed its end.
func (c *PacketConn) ReadPacket(buf []byte) (int, error) {
	n, _, err := c.recvmsg(buf, nil)
	return n, err
}

// WritePacket sends b as one packet with files attached. A packet over the
// socket's limit fails with an error wrapping unix.EMSGSIZE. The caller
// keeps files.
func (c *PacketConn) WritePacket(b []byte, files ...*os.File) error {
	_, err := c.sendmsg([][]byte{b}, files)
	return err
}

// CloseWrite shuts down the sending side: the peer reads end of stream.
func (c *PacketConn) CloseWrite() error {
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

// Close closes the socket; a blocked ReadPacket returns an error.
func (c *PacketConn) Close() error {
	if err := c.close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}
