package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The broker protocol rides on the control channel's frames (see
// docs/ipc-protocol.md). A rank sends a FrameRequest whose payload starts
// with an op byte; the broker answers with a FrameReply or a FrameError
// carrying the same frame ID. Integers in bodies are little endian.
const (
	opPublish    = 1  // kind u8, then size u64 [flags u8] (+ 1 fd), or the blob → handle
	opOpen       = 2  // handle → 1 fd, or the blob
	opRelease    = 3  // handle → empty
	opPut        = 4  // queue → empty, once the queue has room
	opGet        = 5  // queue id u64, capacity u32 → message
	opTaskDone   = 6  // queue id u64, capacity u32 → empty
	opJoin       = 7  // queue id u64, capacity u32 → empty, once every put item is done
	opWaitUnheld = 8  // handle, timeout ms u32 → holder ranks (i32 each) still holding it
	opCheck      = 9  // handle → empty, or ErrProducerGone
	opPutBatch   = 10 // queue, then messages (u32 length + message each); frame ID 0, no reply
	opGetBatch   = 11 // queue, max u16 → 1..max messages (u32 length + message each)
	opCancel     = 12 // request id u64 → empty, once that waiting request of this rank is dropped
)

// Error codes, the first byte of a FrameError payload; the rest is the
// message.
const (
	errCodeOther        = 0
	errCodeBadHandle    = 1
	errCodeProducerGone = 2
	errCodeBadRequest   = 3
	errCodeClosed       = 4
	errCodeProtocol     = 5 // the rank broke the protocol: the broker closes its channel after this frame
	errCodeLimit        = 6 // the rank reached one of its limits (see Limits); the request is refused
)

// Notices, the first byte of a FrameNotice payload, followed by a handle.
const (
	noticeProducerGone = 1 // to holders: the producer of a producer-owned handle exited
	noticeFreed        = 2 // to the producer: a handle published with publishNotifyFree was freed
)

// Publish flags, the optional byte after a host or fd handle's size.
const publishNotifyFree = 1 // tell the producer when nobody holds the handle any more

// ErrBrokerClosed is returned for requests after the broker shut down, or
// once the control channel has ended.
var ErrBrokerClosed = errors.New("ipc: broker closed")

// ErrProtocol is wrapped by the error a rank gets when the broker found it
// breaking the protocol (a malformed frame, a frame written by another
// process than the rank, a frame left unfinished): the broker says why in
// an error frame and closes the channel, so this call and every later one
// fail with it.
var ErrProtocol = errors.New("ipc: protocol violation")

// ErrLimit is wrapped by the error of a request refused because the rank
// reached one of its limits (see Limits). The rank's channel stays usable:
// releasing handles, or waiting for fewer things at once, makes room.
var ErrLimit = errors.New("ipc: limit reached")

// errPayload encodes err for a FrameError.
func errPayload(err error) []byte {
	code := byte(errCodeOther)
	switch {
	case errors.Is(err, ErrBadHandle):
		code = errCodeBadHandle
	case errors.Is(err, ErrProducerGone):
		code = errCodeProducerGone
	case errors.Is(err, errBadRequest):
		code = errCodeBadRequest
	case errors.Is(err, ErrBrokerClosed):
		code = errCodeClosed
	case errors.Is(err, ErrProtocol):
		code = errCodeProtocol
	case errors.Is(err, ErrLimit):
		code = errCodeLimit
	}
	return append([]byte{code}, err.Error()...)
}

// payloadErr decodes a FrameError payload into an error that errors.Is
// matches against the sentinel it came from.
func payloadErr(b []byte) error {
	if len(b) == 0 {
		return errors.New("ipc: broker error")
	}
	msg := string(b[1:])
	var sentinel error
	switch b[0] {
	case errCodeBadHandle:
		sentinel = ErrBadHandle
	case errCodeProducerGone:
		sentinel = ErrProducerGone
	case errCodeBadRequest:
		sentinel = errBadRequest
	case errCodeClosed:
		sentinel = ErrBrokerClosed
	case errCodeProtocol:
		sentinel = ErrProtocol
	case errCodeLimit:
		sentinel = ErrLimit
	default:
		return errors.New(msg)
	}
	return &brokerError{msg: msg, sentinel: sentinel}
}

type brokerError struct {
	msg      string
	sentinel error
}

func (e *brokerError) Error() string { return e.msg }
func (e *brokerError) Unwrap() error { return e.sentinel }

var errBadRequest = errors.New("ipc: bad request")

// queueRef is how a request names a queue: its id and capacity (0 means
// unbounded); the broker creates the queue on first use.
type queueRef struct {
	ID  uint64
	Cap uint32
}

func appendQueueRef(b []byte, q queueRef) []byte {
	b = binary.LittleEndian.AppendUint64(b, q.ID)
	return binary.LittleEndian.AppendUint32(b, q.Cap)
}

func cutQueueRef(b []byte) (queueRef, []byte, error) {
	if len(b) < 12 {
		return queueRef{}, nil, fmt.Errorf("%w: short queue reference", errBadRequest)
	}
	return queueRef{ID: binary.LittleEndian.Uint64(b), Cap: binary.LittleEndian.Uint32(b[8:])}, b[12:], nil
}

// A queue message on the wire: handle count u16, the handles, then the
// encoded value.
func appendMessage(b []byte, handles []Handle, value []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(handles)))
	for _, h := range handles {
		b = appendHandle(b, h)
	}
	return append(b, value...)
}

func cutMessage(b []byte) ([]Handle, []byte, error) {
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("%w: short message", errBadRequest)
	}
	n := int(binary.LittleEndian.Uint16(b))
	b = b[2:]
	if len(b) < n*handleSize {
		return nil, nil, fmt.Errorf("%w: message names %d handles in %d bytes", errBadRequest, n, len(b))
	}
	hs := make([]Handle, n)
	for i := range hs {
		h, err := decodeHandle(b[i*handleSize:])
		if err != nil {
			return nil, nil, err
		}
		hs[i] = h
	}
	return hs, b[n*handleSize:], nil
}

// appendBatchItem appends one length-prefixed message to a batch.
func appendBatchItem(b, msg []byte) []byte {
	return append(binary.LittleEndian.AppendUint32(b, uint32(len(msg))), msg...)
}

// splitBatch splits a batch into its messages.
func splitBatch(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 4 || uint64(binary.LittleEndian.Uint32(b)) > uint64(len(b)-4) {
			return nil, fmt.Errorf("%w: truncated batch", errBadRequest)
		}
		n := binary.LittleEndian.Uint32(b)
		out = append(out, b[4:4+n])
		b = b[4+n:]
	}
	return out, nil
}
