package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"

	"github.com/mpspawn/mpspawn/internal/codec"
)

// Queue is a queue of T values between ranks, held by the broker: many
// producers, many consumers, optionally bounded. It is a small value: make
// it in the launcher (or in any rank) with NewQueue and send it to ranks in
// their arguments. Values are encoded with encoding/gob; Handles inside
// them travel with them, so the queue holds their buffers until a rank
// gets them, and the getter may then open them. Values that encode to more
// than InlineMax bytes go through a shared buffer instead of the socket, as
// torch moves tensors to shared memory on put.
type Queue[T any] struct {
	ID       uint64
	Capacity uint32 // 0: unbounded
}

// InlineMax is the largest encoded value a Queue sends inline.
const InlineMax = 1 << 20

// NewQueue returns a new queue holding at most capacity values (0:
// unbounded). The broker creates it on first use.
func NewQueue[T any](capacity int) Queue[T] {
	var b [8]byte
	if err := randomBytes(b[:]); err != nil {
		panic("ipc: new queue: " + err.Error()) // as crypto/rand.Read does: no randomness is not recoverable
	}
	return Queue[T]{ID: binary.LittleEndian.Uint64(b[:]) | 1, Capacity: uint32(max(capacity, 0))}
}

func (q Queue[T]) ref() queueRef { return queueRef{ID: q.ID, Cap: q.Capacity} }

// The first byte of a queue message's value.
const (
	valueInline = 0 // gob of T follows
	valueBuffer = 1 // the gob of T is in the buffer named by the message's last handle
)

var errNoClient = errors.New("ipc: not in a rank started by the launcher (no client in the context)")

// Put adds v to the queue, waiting for room in a bounded queue or for ctx.
// On an unbounded queue a value without handles is sent asynchronously, in
// a batch with the puts made meanwhile, as multiprocessing.Queue does; an
// error the broker reports then comes back from a later call.
func (q Queue[T]) Put(ctx context.Context, v T) error {
	c := ClientFrom(ctx)
	if c == nil {
		return errNoClient
	}
	value, err := codec.AppendSlice([]byte{valueInline}, []T{v})
	if err != nil {
		return fmt.Errorf("ipc: queue put: encode: %w", err)
	}
	handles := handlesIn(reflect.ValueOf(&v), nil)
	if len(value) > InlineMax {
		buf, err := c.NewBuffer(len(value) - 1)
		if err != nil {
			return err
		}
		copy(buf.Bytes(), value[1:])
		h, err := buf.Publish(ctx)
		if err != nil {
			buf.Close(ctx)
			return err
		}
		handles, value = append(handles, h), []byte{valueBuffer}
		defer buf.Close(ctx) // the queue holds it now
	}
	if q.Capacity == 0 && len(handles) == 0 {
		return c.putAsync(q.ref(), appendMessage(nil, nil, value))
	}
	body := appendMessage(appendQueueRef([]byte{opPut}, q.ref()), handles, value)
	_, err = c.request(ctx, body)
	return err
}

// Get takes the oldest value, waiting for one or for ctx. The handles in
// it are now held by this rank: open them, and release (or close) them when
// done.
func (q Queue[T]) Get(ctx context.Context) (T, error) {
	var v T
	c := ClientFrom(ctx)
	if c == nil {
		return v, errNoClient
	}
	f, err := c.request(ctx, appendQueueRef([]byte{opGet}, q.ref()))
	if err != nil {
		return v, err
	}
	return decodeMessage[T](ctx, c, f.Payload)
}

// GetBatch takes up to limit values at once, waiting for at least one or for
// ctx: for a consumer of many small values, one round trip to the broker
// instead of one per value. When several ranks wait, the waiting values are
// shared out among them. Values a rank took are its own: they are not
// returned to the queue if it exits.
func (q Queue[T]) GetBatch(ctx context.Context, limit int) ([]T, error) {
	c := ClientFrom(ctx)
	if c == nil {
		return nil, errNoClient
	}
	limit = min(max(limit, 1), 1<<16-1)
	f, err := c.request(ctx, binary.LittleEndian.AppendUint16(appendQueueRef([]byte{opGetBatch}, q.ref()), uint16(limit)))
	if err != nil {
		return nil, err
	}
	msgs, err := splitBatch(f.Payload)
	if err != nil || len(msgs) == 0 {
		return nil, fmt.Errorf("ipc: queue get: bad batch: %v", err)
	}
	out := make([]T, 0, len(msgs))
	for i, raw := range msgs {
		v, err := decodeMessage[T](ctx, c, raw)
		if err != nil {
			for _, rest := range msgs[i+1:] { // nobody will see these values
				if hs, _, cerr := cutMessage(rest); cerr == nil {
					c.releaseAll(ctx, hs)
				}
			}
			return out, err
		}
		out = append(out, v)
	}
	return out, nil
}

// decodeMessage decodes one message's value. When it cannot, the handles
// the message gave this rank are released: nobody will see them.
func decodeMessage[T any](ctx context.Context, c *Client, raw []byte) (v T, err error) {
	handles, value, err := cutMessage(raw)
	if err != nil || len(value) == 0 {
		return v, fmt.Errorf("ipc: queue get: bad message: %v", err)
	}
	defer func() {
		if err != nil {
			c.releaseAll(ctx, handles)
		}
	}()
	data := value[1:]
	if value[0] == valueBuffer {
		if len(handles) == 0 {
			return v, fmt.Errorf("ipc: queue get: buffered value without its buffer")
		}
		m, err := c.Open(ctx, handles[len(handles)-1])
		if err != nil {
			return v, err
		}
		defer m.Close(ctx)
		data = m.Bytes()
	}
	vs, err := codec.DecodeSlice[T](data)
	if err != nil || len(vs) != 1 {
		return v, fmt.Errorf("ipc: queue get: decode: %v", err)
	}
	return vs[0], nil
}

// TaskDone marks one value got from the queue as processed (a joinable
// queue's task_done).
func (q Queue[T]) TaskDone(ctx context.Context) error {
	c := ClientFrom(ctx)
	if c == nil {
		return errNoClient
	}
	_, err := c.request(ctx, appendQueueRef([]byte{opTaskDone}, q.ref()))
	return err
}

// Join waits until every value put on the queue has been got and marked
// with TaskDone, or for ctx.
func (q Queue[T]) Join(ctx context.Context) error {
	c := ClientFrom(ctx)
	if c == nil {
		return errNoClient
	}
	_, err := c.request(ctx, appendQueueRef([]byte{opJoin}, q.ref()))
	return err
}

// Pipe is one end of a duplex channel between two ranks: what one end
// sends, the other receives. NewPipe makes both ends; give one to each
// rank.
type Pipe[T any] struct {
	Send, Recv Queue[T]
}

// NewPipe returns the two ends of a new pipe.
func NewPipe[T any]() (Pipe[T], Pipe[T]) {
	ab, ba := NewQueue[T](0), NewQueue[T](0)
	return Pipe[T]{Send: ab, Recv: ba}, Pipe[T]{Send: ba, Recv: ab}
}

// Put sends v to the other end.
func (p Pipe[T]) Put(ctx context.Context, v T) error { return p.Send.Put(ctx, v) }

// Get receives the next value the other end sent.
func (p Pipe[T]) Get(ctx context.Context) (T, error) { return p.Recv.Get(ctx) }

// releaseAll drops this rank's holds on hs, as far as it can.
func (c *Client) releaseAll(ctx context.Context, hs []Handle) {
	for _, h := range hs {
		_ = c.Release(ctx, h)
	}
}

var handleType = reflect.TypeFor[Handle]()

// handlesIn collects the Handles inside v.
func handlesIn(v reflect.Value, out []Handle) []Handle {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			out = handlesIn(v.Elem(), out)
		}
	case reflect.Struct:
		if v.Type() == handleType {
			// Once per message, however often the value names it.
			if h := v.Interface().(Handle); h.ID != 0 && !slices.Contains(out, h) {
				out = append(out, h)
			}
			return out
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				out = handlesIn(v.Field(i), out)
			}
		}
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return out
		}
		for i := range v.Len() {
			out = handlesIn(v.Index(i), out)
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			out = handlesIn(it.Key(), out)
			out = handlesIn(it.Value(), out)
		}
	}
	return out
}
