package ipc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// The control-fd contract: a rank given a control channel inherits its end
// as file descriptor ControlFD, and ControlFDEnv names it in the rank's
// environment. Plain scripts ignore both.
const (
	ControlFDEnv = "MPSPAWN_CONTROL_FD"
	ControlFD    = 3 // the first of the rank's extra files
)

// ControlFDVar is the environment entry that tells a rank where its
// control channel is.
func ControlFDVar() string { return ControlFDEnv + "=" + strconv.Itoa(ControlFD) }

// ConnFromEnv returns the control channel this process inherited, as
// ControlFDEnv names it, and removes the variable from the environment, so
// that a process this one starts does not take the descriptor for its own.
func ConnFromEnv() (*Conn, error) {
	v, ok := os.LookupEnv(ControlFDEnv)
	if !ok {
		return nil, fmt.Errorf("ipc: no control channel: %s is not set", ControlFDEnv)
	}
	os.Unsetenv(ControlFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 0 {
		return nil, fmt.Errorf("ipc: %s=%q: not a file descriptor", ControlFDEnv, v)
	}
	return FileConn(os.NewFile(uintptr(fd), "mpspawn-control"))
}

// ClientFromEnv returns a Client on the control channel this process
// inherited (see ConnFromEnv): how a program started with `mpspawn --ipc`
// reaches the broker. rank labels the client.
func ClientFromEnv(rank int) (*Client, error) {
	conn, err := ConnFromEnv()
	if err != nil {
		return nil, err
	}
	return NewClient(conn, rank), nil
}

// PeerError is a frame on a rank's control channel that another process
// than the rank wrote (a child the rank passed its descriptor to, or a
// stranger that got hold of it). The kernel stamps every frame with its
// writer's pid, so the lie is always caught.
type PeerError struct {
	Rank int // the channel's rank
	Want int // the rank's pid
	Got  int // the pid that wrote the frame
}

func (e *PeerError) Error() string {
	return fmt.Sprintf("ipc: rank %d's control channel: pid %d wrote a frame, but only the rank (pid %d) may", e.Rank, e.Got, e.Want)
}

// Serve is the launcher's one read loop on a rank's control channel. It
// attaches conn to b as rank, then reads frames until the channel ends:
// broker requests (FrameRequest) are answered by b, and every other frame
// goes to deliver, which owns its files. Each frame must have been written
// by pid, the rank's process: the first that was not ends Serve with a
// *PeerError. Serve detaches the rank before it returns.
//
// A channel never ends in silence: when Serve ends with an error (a
// malformed frame, a frame left unfinished for longer than the broker's
// frame timeout, a frame written by another process, a frame nobody
// expects, an error from deliver), the rank is sent an error frame naming
// it (ErrProtocol) and the channel is closed after it, so that the rank's
// pending and later calls fail with that error.
//
// Serve returns nil when the channel ended (the rank closed it, or the
// caller closed conn or set a read deadline to stop it), the error of
// Attach, the error deliver returned, or why the channel broke. A nil
// deliver makes any frame but a request such an error.
func (b *Broker) Serve(rank int, conn *Conn, pid int, deliver func(Frame) error) error {
	if err := b.Attach(rank, conn); err != nil {
		return err
	}
	defer b.Detach(rank, conn) // the rank is gone: its holds are released
	conn.SetFrameTimeout(b.limits.FrameTimeout)
	err := b.readLoop(rank, conn, pid, deliver)
	if err != nil && b.peerErr(rank, conn) == nil {
		b.refuse(rank, conn, err)
	}
	return err
}

// readLoop is Serve's read loop.
func (b *Broker) readLoop(rank int, conn *Conn, pid int, deliver func(Frame) error) error {
	for {
		f, err := conn.ReadFrame()
		if err != nil {
			if cut := b.peerErr(rank, conn); cut != nil {
				return cut // the broker cut it off: it does not read
			}
			if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("ipc: rank %d's control channel: %w", rank, err)
		}
		if err := checkPeer(conn, rank, pid); err != nil {
			closeFiles(f.Files)
			return err
		}
		switch {
		case f.Type == FrameRequest:
			b.Handle(rank, f)
		case deliver == nil:
			closeFiles(f.Files)
			return fmt.Errorf("ipc: rank %d's control channel: unexpected %v frame", rank, f.Type)
		default:
			if err := deliver(f); err != nil {
				return err
			}
		}
	}
}

// refuse tells rank, attached with conn, why its channel is being closed
// (err, sent as ErrProtocol in an error frame with id 0), and closes it
// once that frame is written.
func (b *Broker) refuse(rank int, conn *Conn, err error) {
	b.mu.Lock()
	p := b.peers[rank]
	b.mu.Unlock()
	if p == nil || p.conn != conn {
		conn.Close()
		return
	}
	payload := append([]byte{errCodeProtocol}, fmt.Sprintf("%v: %v", ErrProtocol, err)...)
	p.finish(outFrame{p: p, f: Frame{Type: FrameError, Payload: payload}})
}

// peerErr is why the broker cut rank (attached with conn) off, or nil.
func (b *Broker) peerErr(rank int, conn *Conn) error {
	b.mu.Lock()
	p := b.peers[rank]
	b.mu.Unlock()
	if p == nil || p.conn != conn {
		return nil
	}
	return p.err()
}

// checkPeer verifies that the frame just read from conn was written by pid.
func checkPeer(conn *Conn, rank, pid int) error {
	cred, err := conn.PeerCred()
	if err != nil {
		return fmt.Errorf("ipc: rank %d's control channel: peer: %w", rank, err)
	}
	if int(cred.Pid) != pid {
		return &PeerError{Rank: rank, Want: pid, Got: int(cred.Pid)}
	}
	return nil
}
