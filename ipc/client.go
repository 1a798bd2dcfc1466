package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Client is a rank's side of the broker: it sends requests over the rank's
// control channel and reads every frame that comes back, so it must be the
// channel's only reader. A Client is safe for concurrent use.
type Client struct {
	conn *Conn
	rank int

	mu        sync.Mutex
	nextID    uint64
	pending   map[uint64]chan Frame
	gone      map[uint64]bool      // producer-owned handles whose producer exited
	published []Handle             // producer-owned handles this rank published
	freed     map[uint64]*freeWait // handles published with publishNotifyFree, until freed
	err       error                // why the channel ended
	asyncErr  error                // a batched put the broker refused
	done      chan struct{}

	// Puts to unbounded queues are batched: Put appends to batches and a
	// flusher goroutine writes them, so that puts made while a write is
	// under way go out together (as multiprocessing.Queue's feeder thread
	// does). wmu orders batches before any later request.
	// inbox receives the launcher's own requests (a Pool worker's tasks)
	// when the client was made WithInbox.
	inbox chan<- Frame

	wmu     sync.Mutex
	batches [][]byte         // put-batch request payloads, in order
	open    map[queueRef]int // the batch still taking puts for a queue, by index

	flushSig chan struct{}
}

// NewClient starts reading conn, the control channel of rank, for replies
// and notices. The launcher makes it for a rank; a rank's function gets it
// with ClientFrom.
func NewClient(conn *Conn, rank int, opts ...ClientOption) *Client {
	c := &Client{conn: conn, rank: rank, pending: map[uint64]chan Frame{}, gone: map[uint64]bool{}, freed: map[uint64]*freeWait{}, done: make(chan struct{}),
		open: map[queueRef]int{}, flushSig: make(chan struct{}, 1)}
	for _, o := range opts {
		o(c)
	}
	go c.read()
	go c.flusher()
	return c
}

// ClientOption configures a Client made by NewClient.
type ClientOption func(*Client)

// WithInbox makes the client deliver the requests and the close that the
// launcher itself sends on the channel (a Pool worker's tasks, say) to
// inbox, which it closes when the channel ends. The client's one reader
// blocks while inbox is full, so its owner makes room for as many frames
// as the launcher may send ahead of the ones it handled.
func WithInbox(inbox chan<- Frame) ClientOption {
	return func(c *Client) { c.inbox = inbox }
}

// Rank is the rank the client belongs to.
func (c *Client) Rank() int { return c.rank }

func (c *Client) read() {
	defer close(c.done)
	if c.inbox != nil {
		defer close(c.inbox)
	}
	for {
		f, err := c.conn.ReadFrame()
		if err == nil && f.Type == FrameError && len(f.Payload) > 0 && f.Payload[0] == errCodeProtocol {
			// The broker says why it closes the channel: every pending
			// and later call fails with that.
			closeFiles(f.Files)
			err = payloadErr(f.Payload)
		}
		if err != nil {
			c.mu.Lock()
			if err == io.EOF {
				err = fmt.Errorf("%w: the launcher closed the control channel (end of stream)", ErrBrokerClosed)
			}
			c.err = err
			for id, ch := range c.pending {
				close(ch)
				delete(c.pending, id)
			}
			// Released handles cannot be freed now: no notice will come.
			var lost []func()
			for id, w := range c.freed {
				if w.released {
					lost = append(lost, w.lost)
					delete(c.freed, id)
				}
			}
			c.mu.Unlock()
			for _, fn := range lost {
				fn()
			}
			return
		}
		if c.inbox != nil && (f.Type == FrameRequest || f.Type == FrameClose) {
			c.inbox <- f // sized by its owner: see WithInbox
			continue
		}
		var freed func()
		c.mu.Lock()
		switch {
		case f.Type == FrameError && f.ID == 0: // a batched put was refused
			if c.asyncErr == nil {
				c.asyncErr = payloadErr(f.Payload)
			}
		case f.Type == FrameNotice && len(f.Payload) > 0:
			h, err := decodeHandle(f.Payload[1:])
			switch {
			case err != nil:
			case f.Payload[0] == noticeProducerGone:
				c.gone[h.ID] = true
			case f.Payload[0] == noticeFreed:
				if w := c.freed[h.ID]; w != nil {
					freed = w.freed
					delete(c.freed, h.ID)
				}
			}
		default:
			if ch := c.pending[f.ID]; ch != nil {
				delete(c.pending, f.ID)
				ch <- f
				f.Files = nil
			}
		}
		c.mu.Unlock()
		closeFiles(f.Files) // a reply nobody waits for
		if freed != nil {
			freed()
		}
	}
}

// freeWait is a handle this rank published with publishNotifyFree: freed
// is called (by the reader, so it must not block) when the broker frees
// it; lost when it cannot be any more, because the channel ended after
// this rank released it.
type freeWait struct {
	freed, lost func()
	released    bool
}

// onFree registers h, which this rank published with publishNotifyFree.
func (c *Client) onFree(h Handle, freed, lost func()) {
	c.mu.Lock()
	c.freed[h.ID] = &freeWait{freed: freed, lost: lost}
	c.mu.Unlock()
}

// releasedFree is called once this rank has released h (registered with
// onFree), successfully or not (err): h is then freed when its last holder
// releases it. If no notice can come for h any more (the release failed,
// or the channel has ended), h is forgotten and its lost func called.
func (c *Client) releasedFree(h Handle, err error) {
	c.mu.Lock()
	w := c.freed[h.ID]
	if w != nil && (err != nil || c.err != nil) {
		delete(c.freed, h.ID)
		c.mu.Unlock()
		w.lost()
		return
	}
	if w != nil {
		w.released = true
	}
	c.mu.Unlock()
}

// request sends one request and waits for its reply, or for ctx.
func (c *Client) request(ctx context.Context, payload []byte, files ...*os.File) (Frame, error) {
	ch := make(chan Frame, 1)
	c.mu.Lock()
	if c.err != nil || c.asyncErr != nil {
		err := c.err
		if err == nil {
			err, c.asyncErr = c.asyncErr, nil
		}
		c.mu.Unlock()
		return Frame{}, err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	c.wmu.Lock()
	err := c.flushLocked()
	if err == nil {
		err = c.conn.WriteFrame(Frame{Type: FrameRequest, ID: id, Payload: payload, Files: files})
	}
	c.wmu.Unlock()
	if err != nil {
		c.forget(id, ch)
		if cerr := c.endedErr(err); cerr != nil {
			return Frame{}, fmt.Errorf("ipc: control channel: %w", cerr)
		}
		return Frame{}, fmt.Errorf("ipc: request: %w", err)
	}
	select {
	case f, ok := <-ch:
		if !ok {
			return Frame{}, fmt.Errorf("ipc: control channel: %w", c.closedErr())
		}
		if f.Type == FrameError {
			closeFiles(f.Files)
			return Frame{}, payloadErr(f.Payload)
		}
		return f, nil
	case <-ctx.Done():
		return c.cancel(id, ch, context.Cause(ctx))
	}
}

// cancelWait bounds how long a cancelled request waits for the broker to
// confirm that it dropped it.
const cancelWait = 5 * time.Second

// cancel tells the broker to drop request id, whose caller gave up with
// cause. If the broker had already answered (the reply arrives before the
// cancel's ack), the reply is returned as a success, so that no message a
// Get took is lost.
func (c *Client) cancel(id uint64, ch chan Frame, cause error) (Frame, error) {
	ctx, stop := context.WithTimeout(context.Background(), cancelWait)
	defer stop()
	_, err := c.request(ctx, binary.LittleEndian.AppendUint64([]byte{opCancel}, id))
	select {
	case f, ok := <-ch:
		if ok && err == nil && f.Type != FrameError {
			return f, nil
		}
		closeFiles(f.Files)
	default:
	}
	c.forget(id, ch)
	return Frame{}, cause
}

// maxBatch bounds a put batch's payload, well below the frame limit
// (DefaultMaxPayload), so that a fast producer's batch is never a frame the
// broker must refuse.
const maxBatch = 8 << 20

// maxMessage is the largest message a queue carries: what fits in one
// frame with its batch header. Larger data travels as a buffer (a Handle).
const maxMessage = DefaultMaxPayload - 64

// putAsync queues msg for q, to be written by the flusher.
func (c *Client) putAsync(q queueRef, msg []byte) error {
	if len(msg) > maxMessage {
		return fmt.Errorf("ipc: put: a %d-byte message is larger than a frame (%d bytes): publish it as a buffer and put its Handle", len(msg), maxMessage)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	if c.asyncErr != nil {
		err := c.asyncErr
		c.asyncErr = nil
		return err
	}
	i, ok := c.open[q]
	if !ok || len(c.batches[i])+4+len(msg) > maxBatch {
		// A batch stays well below the frame limit: the next one goes in
		// a frame of its own.
		i = len(c.batches)
		c.batches = append(c.batches, appendQueueRef([]byte{opPutBatch}, q))
		c.open[q] = i
	}
	c.batches[i] = appendBatchItem(c.batches[i], msg)
	select {
	case c.flushSig <- struct{}{}:
	default:
	}
	return nil
}

// flusher writes batched puts until the channel ends.
func (c *Client) flusher() {
	for {
		select {
		case <-c.flushSig:
			c.wmu.Lock()
			_ = c.flushLocked() // a failed write ends the channel; requests see it
			c.wmu.Unlock()
		case <-c.done:
			return
		}
	}
}

// flushLocked writes every pending batch; c.wmu is held.
func (c *Client) flushLocked() error {
	c.mu.Lock()
	batches := c.batches
	if len(batches) == 0 {
		c.mu.Unlock()
		return nil
	}
	c.batches, c.open = nil, map[queueRef]int{}
	c.mu.Unlock()
	for _, b := range batches {
		if err := c.conn.WriteFrame(Frame{Type: FrameRequest, Payload: b}); err != nil {
			return err
		}
	}
	return nil
}

// Flush writes the puts still batched in this rank.
func (c *Client) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

// forget drops a pending request whose reply no longer matters, closing
// any descriptor that came with it (the reply may already be in ch).
func (c *Client) forget(id uint64, ch chan Frame) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
	select {
	case f := <-ch:
		closeFiles(f.Files)
	default:
	}
}

// endWait bounds how long a request whose write failed because the
// launcher closed the channel waits for the reader to learn why.
const endWait = 5 * time.Second

// endedErr returns why the channel ended, when the write error werr says
// that the launcher closed it: the broker's error frame (ErrProtocol) that
// the reader is about to read, or end of stream. It returns nil for other
// write errors.
func (c *Client) endedErr(werr error) error {
	if !errors.Is(werr, syscall.EPIPE) && !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, os.ErrClosed) {
		return nil
	}
	t := time.NewTimer(endWait)
	defer t.Stop()
	select {
	case <-c.done:
		return c.closedErr()
	case <-t.C:
		return nil
	}
}

func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Release drops this rank's hold on h: received through a queue, or
// published by this rank. A host buffer is freed when nobody holds it.
func (c *Client) Release(ctx context.Context, h Handle) error {
	_, err := c.request(ctx, appendHandle([]byte{opRelease}, h))
	return err
}

// PublishBlob publishes a producer-owned blob, such as the 64-byte
// cudaIpcMemHandle_t of memory this rank allocated. Before this rank exits,
// Close waits (bounded) for every holder to release it.
func (c *Client) PublishBlob(ctx context.Context, blob []byte) (Handle, error) {
	f, err := c.request(ctx, append([]byte{opPublish, byte(KindProducerOwned)}, blob...))
	if err != nil {
		return Handle{}, err
	}
	h, err := decodeHandle(f.Payload)
	if err == nil {
		c.mu.Lock()
		c.published = append(c.published, h)
		c.mu.Unlock()
	}
	return h, err
}

// PublishFD publishes a descriptor the kernel reference-counts (KindFD),
// such as a CUDA VMM allocation exported as a POSIX fd, of size bytes. The
// caller keeps f.
func (c *Client) PublishFD(ctx context.Context, f *os.File, size int64) (Handle, error) {
	return c.publishFile(ctx, KindFD, f, size, 0)
}

// publishFile publishes f with the publish flags given (publishNotifyFree).
func (c *Client) publishFile(ctx context.Context, kind Kind, f *os.File, size int64, flags byte) (Handle, error) {
	body := binary.LittleEndian.AppendUint64([]byte{opPublish, byte(kind)}, uint64(size))
	if flags != 0 {
		body = append(body, flags)
	}
	r, err := c.request(ctx, body, f)
	if err != nil {
		return Handle{}, err
	}
	return decodeHandle(r.Payload)
}

// OpenFD returns the descriptor a KindFD or KindHost handle names. The
// caller closes it, and releases the handle when done.
func (c *Client) OpenFD(ctx context.Context, h Handle) (*os.File, error) {
	f, err := c.request(ctx, appendHandle([]byte{opOpen}, h))
	if err != nil {
		return nil, err
	}
	if len(f.Files) != 1 {
		closeFiles(f.Files)
		return nil, fmt.Errorf("%w: %s: no descriptor", ErrBadHandle, h)
	}
	return f.Files[0], nil
}

// Blob is a producer-owned handle opened by a holder.
type Blob struct {
	c    *Client
	h    Handle
	data []byte
}

// OpenBlob returns the blob a producer-owned handle names, for example to
// pass to cudaIpcOpenMemHandle. Call Valid before every use of what it
// names, and Close (which releases the handle) when done.
func (c *Client) OpenBlob(ctx context.Context, h Handle) (*Blob, error) {
	f, err := c.request(ctx, appendHandle([]byte{opOpen}, h))
	if err != nil {
		return nil, err
	}
	closeFiles(f.Files)
	return &Blob{c: c, h: h, data: f.Payload}, nil
}

// Bytes is the blob.
func (b *Blob) Bytes() []byte { return b.data }

// Valid returns ErrProducerGone once the producer has exited: the memory
// the blob named is gone, and must not be read. It asks the broker, which
// learns of the producer's exit before anyone else can; a notice the
// broker pushed when the producer died answers without asking.
func (b *Blob) Valid(ctx context.Context) error {
	b.c.mu.Lock()
	gone := b.c.gone[b.h.ID]
	b.c.mu.Unlock()
	if gone {
		return fmt.Errorf("%w: %s", ErrProducerGone, b.h)
	}
	_, err := b.c.request(ctx, appendHandle([]byte{opCheck}, b.h))
	return err
}

// Close releases the handle.
func (b *Blob) Close(ctx context.Context) error { return b.c.Release(ctx, b.h) }

// DefaultCloseWait bounds how long Close waits for holders of this rank's
// producer-owned handles.
const DefaultCloseWait = 10 * time.Second

// Close is called as the rank exits: for every producer-owned handle it
// published, it waits up to wait for the other holders to release it, and
// returns a warning naming the ranks that still hold one. It does not close
// the control channel.
func (c *Client) Close(ctx context.Context, wait time.Duration) []string {
	_ = c.Flush() // puts made just before the rank returns still arrive
	c.mu.Lock()
	hs := c.published
	c.published = nil
	c.mu.Unlock()
	var warnings []string
	for _, h := range hs {
		body := appendHandle([]byte{opWaitUnheld}, h)
		body = binary.LittleEndian.AppendUint32(body, uint32(wait/time.Millisecond))
		f, err := c.request(ctx, body)
		if err != nil {
			continue // released and freed already, or the channel is gone
		}
		var holders []int
		for p := f.Payload; len(p) >= 4; p = p[4:] {
			holders = append(holders, int(int32(binary.LittleEndian.Uint32(p))))
		}
		if len(holders) > 0 {
			sort.Ints(holders)
			warnings = append(warnings, fmt.Sprintf("ipc: rank %d exits while ranks %v still hold %s: their next use fails with ErrProducerGone", c.rank, holders, h))
		}
	}
	return warnings
}

type clientKey struct{}

// WithClient returns ctx carrying c.
func WithClient(ctx context.Context, c *Client) context.Context {
	return context.WithValue(ctx, clientKey{}, c)
}

// ClientFrom returns the rank's Client from ctx, or nil outside a rank
// started by the launcher.
func ClientFrom(ctx context.Context) *Client {
	c, _ := ctx.Value(clientKey{}).(*Client)
	return c
}
