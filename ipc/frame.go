package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// wireVersion is the wire format version this package writes and accepts.
const wireVersion = 1

// headerSize is the size in bytes of an encoded frame header.
const headerSize = 20

// MaxFiles is the most descriptors one frame may carry.
const MaxFiles = 16

// DefaultMaxPayload is the largest payload a Conn accepts unless
// [Conn.SetMaxPayload] says otherwise.
const DefaultMaxPayload = 64 << 20

// magic opens every frame header.
const magic = "MPS"

// ErrBadFrame is wrapped by every error reporting a malformed frame, whether
// found while decoding a received frame or while validating one to send.
var ErrBadFrame = errors.New("bad frame")

// ErrOutOfFDs is the error of a frame whose descriptors this process could
// not take, being out of descriptors (RLIMIT_NOFILE): the reader's
// shortage, not a fault of the writer's. The stream is out of step after
// it, as after ErrBadFrame.
var ErrOutOfFDs = errors.New("ipc: out of descriptors")

// FrameType says what a frame is for. The payload encoding of each type
// belongs to the caller; this package only carries it. The zero value is
// reserved and never valid on the wire.
type FrameType uint8

// Frame types shared by the launcher and its ranks.
const (
	// FrameHello opens a conversation: the first frame each side sends,
	// typically naming the rank and what it supports.
	FrameHello FrameType = iota + 1
	// FrameArgs carries a rank's inputs, such as the arguments of the Go
	// function it runs.
	FrameArgs
	// FrameResult carries a rank's successful outcome.
	FrameResult
	// FrameError carries a rank's failure: its error value and stack.
	FrameError
	// FrameRequest asks the peer to do something; its ID is echoed by the
	// matching FrameReply.
	FrameRequest
	// FrameReply answers the FrameRequest with the same ID.
	FrameReply
	// FrameClose announces an orderly shutdown: the sender writes nothing
	// after it.
	FrameClose
	// FrameNotice is an unsolicited message from the broker to a rank,
	// such as "the producer of this handle is gone".
	FrameNotice
)

// String returns the type's name, or its number when it has none.
func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameArgs:
		return "args"
	case FrameResult:
		return "result"
	case FrameError:
		return "error"
	case FrameRequest:
		return "request"
	case FrameReply:
		return "reply"
	case FrameClose:
		return "close"
	case FrameNotice:
		return "notice"
	}
	return "type(" + strconv.Itoa(int(t)) + ")"
}

// Frame is one message on the control channel.
type Frame struct {
	// Type says what the frame is for; it must not be zero.
	Type FrameType
	// ID correlates a request and its reply; 0 when unused.
	ID uint64
	// Payload is the frame's body, opaque to this package. A received
	// frame with an empty payload has a nil Payload.
	Payload []byte
	// Files are descriptors sent with the frame (SCM_RIGHTS), at most
	// MaxFiles. WriteFrame does not close them; the files of a received
	// frame belong to the caller, who closes them.
	Files []*os.File
}

// frameHeader is the fixed-size header that starts every frame on the wire; see
// docs/ipc-protocol.md for its byte layout.
type frameHeader struct {
	// Version is the wire format version, wireVersion for every valid header.
	Version uint8
	// Type is the frame's type.
	Type FrameType
	// Flags is reserved for future use and must be 0.
	Flags uint8
	// NFiles is the number of descriptors sent with the frame.
	NFiles uint8
	// ID is the frame's correlation id.
	ID uint64
	// Length is the payload length in bytes.
	Length uint32
}

// appendHeader appends the headerSize-byte encoding of h to b. It encodes
// every field as given, valid or not.
func appendHeader(b []byte, h frameHeader) []byte {
	b = append(b, magic...)
	b = append(b, h.Version, byte(h.Type), h.Flags, h.NFiles, 0)
	b = binary.BigEndian.AppendUint64(b, h.ID)
	return binary.BigEndian.AppendUint32(b, h.Length)
}

// encode returns the headerSize-byte encoding of h.
func (h frameHeader) encode() []byte {
	return appendHeader(make([]byte, 0, headerSize), h)
}

// parseHeader decodes and validates the header at the start of b. Every
// error wraps ErrBadFrame. It does not check Length against a payload limit;
// that limit belongs to the reading Conn.
func parseHeader(b []byte) (frameHeader, error) {
	h, err := decodeHeader(b)
	if err != nil {
		return frameHeader{}, fmt.Errorf("ipc: decode header: %w", err)
	}
	return h, nil
}

// decodeHeader is parseHeader without the operation in its errors.
func decodeHeader(b []byte) (frameHeader, error) {
	if len(b) < headerSize {
		return frameHeader{}, fmt.Errorf("%w: short header: %d bytes, want %d", ErrBadFrame, len(b), headerSize)
	}
	if string(b[:3]) != magic {
		return frameHeader{}, fmt.Errorf("%w: bad magic %q", ErrBadFrame, b[:3])
	}
	h := frameHeader{
		Version: b[3],
		Type:    FrameType(b[4]),
		Flags:   b[5],
		NFiles:  b[6],
		ID:      binary.BigEndian.Uint64(b[8:16]),
		Length:  binary.BigEndian.Uint32(b[16:20]),
	}
	if err := h.validate(); err != nil {
		return frameHeader{}, err
	}
	if b[7] != 0 {
		return frameHeader{}, fmt.Errorf("%w: reserved byte is %#x, want 0", ErrBadFrame, b[7])
	}
	return h, nil
}

// validate checks the fields a writer controls; every error wraps
// ErrBadFrame.
func (h frameHeader) validate() error {
	switch {
	case h.Version != wireVersion:
		return fmt.Errorf("%w: unknown version %d, want %d", ErrBadFrame, h.Version, wireVersion)
	case h.Type == 0:
		return fmt.Errorf("%w: frame type 0 is reserved", ErrBadFrame)
	case h.Flags != 0:
		return fmt.Errorf("%w: flags are %#x, want 0", ErrBadFrame, h.Flags)
	case h.NFiles > MaxFiles:
		return fmt.Errorf("%w: %d files, at most %d allowed", ErrBadFrame, h.NFiles, MaxFiles)
	}
	return nil
}
