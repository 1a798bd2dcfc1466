package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// BufferPool recycles one rank's host buffers of one size, as a caching
// allocator does: a buffer comes back to the pool once every holder has
// released it (the broker tells its producer when it frees the handle), and
// Get hands it out again, writable, without the cost of fresh memory (the
// kernel zeroes every new page, which for 64 MiB takes longer than filling
// it). At most max buffers are out at once; Get waits for one to come back
// beyond that, which paces a producer to its consumers.
//
// A pooled buffer is sealed against resizing and against writes through any
// new mapping (F_SEAL_FUTURE_WRITE), so no reader can write to it; only the
// producer's own mapping can, and the producer must not write to a buffer
// from Publish until Get hands it out again (NewBuffer's buffers, sealed
// against all writes, have the kernel enforce that). Readers must not use a
// buffer after releasing it: its memory is then reused. Readers keep their
// mappings of pooled buffers for the next hand-off (see mapCache). A
// BufferPool is safe for concurrent use.
type BufferPool struct {
	c    *Client
	size int
	max  int

	mu     sync.Mutex
	idle   []*region
	out    int           // buffers not idle: handed out, or published and held
	back   chan struct{} // closed (and replaced) when a buffer comes back
	closed bool
}

// region is a buffer's memory: the descriptor and the creator's mapping.
type region struct {
	f      *os.File
	data   []byte
	sealed bool // pooled: sealed against resizing and new writable mappings
}

// ErrPoolClosed is returned by Get after Close.
var ErrPoolClosed = errors.New("ipc: buffer pool closed")

// NewBufferPool returns a pool of buffers of size bytes, at most max of
// them out at once.
func (c *Client) NewBufferPool(size, max int) (*BufferPool, error) {
	if size <= 0 || max <= 0 {
		return nil, fmt.Errorf("ipc: buffer pool of %d buffers of %d bytes: want at least 1 of at least 1 byte", max, size)
	}
	return &BufferPool{c: c, size: size, max: max, back: make(chan struct{})}, nil
}

// Get returns a writable buffer: one that came back, with the content it
// had, or a new zeroed one. When max buffers are out, it waits for one to
// come back, for ctx, or for the control channel to end.
func (p *BufferPool) Get(ctx context.Context) (*Buffer, error) {
	for {
		p.mu.Lock()
		switch {
		case p.closed:
			p.mu.Unlock()
			return nil, ErrPoolClosed
		case len(p.idle) > 0:
			m := p.idle[len(p.idle)-1]
			p.idle = p.idle[:len(p.idle)-1]
			p.out++
			p.mu.Unlock()
			return &Buffer{c: p.c, m: m, pool: p}, nil
		case p.out < p.max:
			p.out++
			p.mu.Unlock()
			f, data, err := newMemfd(p.size)
			if err != nil {
				p.returned(nil, false)
				return nil, err
			}
			return &Buffer{c: p.c, m: &region{f: f, data: data}, pool: p}, nil
		}
		back := p.back
		p.mu.Unlock()
		select {
		case <-back:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-p.c.done: // no buffer can come back any more
			return nil, fmt.Errorf("ipc: buffer pool: every buffer is out and the control channel ended: %w", p.c.closedErr())
		}
	}
}

// put takes a buffer back; after Close it is freed instead.
func (p *BufferPool) put(m *region) { p.returned(m, true) }

// discard frees a buffer that will not come back, making room for a new
// one.
func (p *BufferPool) discard(m *region) { p.returned(m, false) }

// returned ends a buffer's time out of the pool (m nil: one that could
// not be made): kept idle for Get, or freed. Waiting Gets are woken
// either way, as there is room or a buffer now.
func (p *BufferPool) returned(m *region, keep bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out--
	switch {
	case m == nil:
	case keep && !p.closed:
		p.idle = append(p.idle, m)
	default:
		m.free()
	}
	if !p.closed {
		close(p.back)
		p.back = make(chan struct{})
	}
}

// Close frees the idle buffers; buffers still out are freed when they come
// back. Get then fails with ErrPoolClosed.
func (p *BufferPool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	for _, m := range p.idle {
		m.free()
	}
	p.idle = nil
	close(p.back)
}

func (m *region) free() {
	if m.data != nil {
		unix.Munmap(m.data)
		m.data = nil
	}
	m.f.Close()
}
