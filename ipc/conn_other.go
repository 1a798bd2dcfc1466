//go:build !linux

package ipc

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// On platforms other than Linux the control channel is not implemented:
// descriptor passing and credential stamping here rely on Linux semantics
// (MSG_CMSG_CLOEXEC, SO_PASSCRED). Every operation fails with
// errUnsupported.

// errUnsupported is returned by every Conn operation off Linux.
var errUnsupported = fmt.Errorf("ipc: control channel needs linux: %w", errors.ErrUnsupported)

// Conn is one end of a control channel; off Linux it only reports
// errors.ErrUnsupported.
type Conn struct{}

// FileConn is not supported off Linux.
func FileConn(*os.File) (*Conn, error) { return nil, errUnsupported }

// Pair is not supported off Linux.
func Pair() (parent *Conn, child *os.File, err error) { return nil, nil, errUnsupported }

// WriteFrame is not supported off Linux.
func (*Conn) WriteFrame(Frame) error { return errUnsupported }

// ReadFrame is not supported off Linux.
func (*Conn) ReadFrame() (Frame, error) { return Frame{}, errUnsupported }

// Ucred is a peer process's credentials; on Linux it is unix.Ucred, whose
// fields it mirrors so that portable code builds everywhere.
type Ucred struct {
	Pid int32
	Uid uint32
	Gid uint32
}

// PeerCred is not supported off Linux.
func (*Conn) PeerCred() (*Ucred, error) { return nil, errUnsupported }

// SetMaxPayload does nothing off Linux.
func (*Conn) SetMaxPayload(int) {}

// SetDeadline is not supported off Linux.
func (*Conn) SetDeadline(time.Time) error { return errUnsupported }

// SetReadDeadline is not supported off Linux.
func (*Conn) SetReadDeadline(time.Time) error { return errUnsupported }

// SetWriteDeadline is not supported off Linux.
func (*Conn) SetWriteDeadline(time.Time) error { return errUnsupported }

// Close does nothing off Linux: no Conn is ever made there.
func (*Conn) Close() error { return nil }

// SetFrameTimeout does nothing off Linux.
func (*Conn) SetFrameTimeout(time.Duration) {}

// PacketConn is one end of a SOCK_SEQPACKET socket pair; off Linux it only
// reports errors.ErrUnsupported.
type PacketConn struct{}

// PacketPair is not supported off Linux.
func PacketPair(string) (parent *PacketConn, child *os.File, err error) {
	return nil, nil, errUnsupported
}

// ReadPacket is not supported off Linux.
func (*PacketConn) ReadPacket([]byte) (int, error) { return 0, errUnsupported }

// WritePacket is not supported off Linux.
func (*PacketConn) WritePacket([]byte, ...*os.File) error { return errUnsupported }

// CloseWrite is not supported off Linux.
func (*PacketConn) CloseWrite() error { return errUnsupported }

// Close is not supported off Linux.
func (*PacketConn) Close() error { return errUnsupported }
