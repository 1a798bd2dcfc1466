package ipc

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Kind is what a Handle stands for, and so how long it lives.
type Kind uint8

// The handle kinds.
const (
	// KindHost is host memory: a sealed memfd the broker keeps. It lives
	// while any holder does, so it outlives its producer.
	KindHost Kind = 1
	// KindFD is a descriptor the kernel reference-counts, such as a CUDA
	// VMM allocation exported as a POSIX file descriptor
	// (cuMemExportToShareableHandle): it lives like a memfd.
	KindFD Kind = 2
	// KindProducerOwned is an opaque blob naming memory that dies with its
	// producer, such as the 64-byte cudaIpcMemHandle_t of
	// cudaIpcGetMemHandle. Its producer waits, bounded, for holders to
	// release it before it exits; if it dies anyway, every holder's next
	// use fails with ErrProducerGone.
	KindProducerOwned Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindHost:
		return "host"
	case KindFD:
		return "fd"
	case KindProducerOwned:
		return "producer-owned"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// handleSize is the size of a Handle on the wire.
const handleSize = 40

// MaxBlob is the largest producer-owned blob (a cudaIpcMemHandle_t is 64
// bytes; a few more are allowed for other opaque handles).
const MaxBlob = 256

// Handle names a shared object that a rank published through the broker. It
// is a small value that travels inside arguments, results, Pipes and Queues;
// Client.Open maps the object in the rank that received it. Token is
// unguessable: a forged handle fails.
type Handle struct {
	ID       uint64
	Size     int64 // bytes: the buffer's size, or the blob's
	Kind     Kind
	Producer int32 // the rank that published it; -1 for the parent
	Token    [16]byte
}

// String names the handle in messages, without its token.
func (h Handle) String() string {
	return fmt.Sprintf("%s handle %d (%d bytes, from rank %d)", h.Kind, h.ID, h.Size, h.Producer)
}

// Errors of handle operations, as the broker reports them.
var (
	// ErrProducerGone: the producer of a producer-owned handle exited, so
	// the memory it named is gone.
	ErrProducerGone = errors.New("ipc: producer of the handle is gone")
	// ErrBadHandle: the handle is forged, stale (released by every holder),
	// already released by this rank, or was never given to this rank.
	ErrBadHandle = errors.New("ipc: bad handle")
)

// appendHandle appends h's 40-byte wire form: id (8), size (8), producer
// (4, signed), kind (1), 3 zero bytes, token (16); little endian.
func appendHandle(b []byte, h Handle) []byte {
	b = binary.LittleEndian.AppendUint64(b, h.ID)
	b = binary.LittleEndian.AppendUint64(b, uint64(h.Size))
	b = binary.LittleEndian.AppendUint32(b, uint32(h.Producer))
	b = append(b, byte(h.Kind), 0, 0, 0)
	return append(b, h.Token[:]...)
}

// decodeHandle reads a handle's wire form from the start of b.
func decodeHandle(b []byte) (Handle, error) {
	if len(b) < handleSize {
		return Handle{}, fmt.Errorf("%w: %d bytes, want %d", ErrBadHandle, len(b), handleSize)
	}
	h := Handle{
		ID:       binary.LittleEndian.Uint64(b),
		Size:     int64(binary.LittleEndian.Uint64(b[8:])),
		Producer: int32(binary.LittleEndian.Uint32(b[16:])),
		Kind:     Kind(b[20]),
	}
	copy(h.Token[:], b[24:40])
	if h.Size < 0 || b[21]|b[22]|b[23] != 0 || h.Kind < KindHost || h.Kind > KindProducerOwned {
		return Handle{}, fmt.Errorf("%w: malformed (%s)", ErrBadHandle, hex.EncodeToString(b[:24]))
	}
	return h, nil
}
