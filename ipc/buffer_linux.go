package ipc

import (
	"context"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Buffer is shared host memory a rank creates: a memfd mapped read-write
// until it is published, then sealed and mapped read-only. No named object
// exists anywhere (no /dev/shm file), so nothing leaks when every process is
// killed: the kernel frees the memory with its last descriptor.
type Buffer struct {
	c    *Client
	f    *os.File
	data []byte
	h    Handle
	once sync.Once
}

// NewBuffer creates a zeroed shared buffer of size bytes, writable through
// Bytes until Publish.
func (c *Client) NewBuffer(size int) (*Buffer, error) {
	f, data, err := newMemfd(size)
	if err != nil {
		return nil, err
	}
	return &Buffer{c: c, f: f, data: data}, nil
}

// newMemfd creates a sealable memfd of size bytes mapped read-write.
func newMemfd(size int) (*os.File, []byte, error) {
	if size <= 0 {
		return nil, nil, fmt.Errorf("ipc: buffer of %d bytes: want at least 1", size)
	}
	fd, err := unix.MemfdCreate("mpspawn-buffer", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, nil, fmt.Errorf("ipc: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mpspawn-buffer")
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("ipc: buffer of %d bytes: %w", size, err)
	}
	data, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("ipc: mmap: %w", err)
	}
	return f, data, nil
}

// Bytes is the buffer's memory: writable before Publish, read-only after.
func (b *Buffer) Bytes() []byte { return b.data }

// Publish seals the buffer (its size and content can no longer change, in
// any process) and registers it with the broker, returning the handle to
// send to other ranks. This rank holds the handle until Close.
func (b *Buffer) Publish(ctx context.Context) (Handle, error) {
	if b.h.ID != 0 {
		return b.h, nil
	}
	size := len(b.data)
	if err := seal(b.f, &b.data); err != nil {
		return Handle{}, err
	}
	h, err := b.c.publishFile(ctx, KindHost, b.f, int64(size))
	if err != nil {
		return Handle{}, err
	}
	b.h = h
	return h, nil
}

// seal unmaps the writable mapping, seals the memfd against writes and
// resizing, and maps it again read-only into *data.
func seal(f *os.File, data *[]byte) error {
	size := len(*data)
	if err := unix.Munmap(*data); err != nil {
		return fmt.Errorf("ipc: munmap: %w", err)
	}
	*data = nil
	seals := unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("ipc: seal buffer: %w", err)
	}
	ro, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("ipc: mmap: %w", err)
	}
	*data = ro
	return nil
}

// Close unmaps the buffer and releases this rank's hold on it; other
// holders keep it alive.
func (b *Buffer) Close(ctx context.Context) error {
	var err error
	b.once.Do(func() {
		if b.data != nil {
			err = unix.Munmap(b.data)
			b.data = nil
		}
		b.f.Close()
		if b.h.ID != 0 {
			if rerr := b.c.Release(ctx, b.h); err == nil {
				err = rerr
			}
		}
	})
	return err
}

// Mapping is a published buffer opened by a rank: read-only memory.
type Mapping struct {
	c    *Client
	h    Handle
	data []byte
	once sync.Once
}

// Open maps the host buffer h read-only. The rank must have been given h
// (through a queue, a pipe, or by the launcher). Close unmaps it and
// releases the handle.
func (c *Client) Open(ctx context.Context, h Handle) (*Mapping, error) {
	if h.Kind != KindHost {
		return nil, fmt.Errorf("%w: %s is not a host buffer", ErrBadHandle, h)
	}
	f, err := c.OpenFD(ctx, h)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := mapReadOnly(f, h.Size)
	if err != nil {
		return nil, err
	}
	return &Mapping{c: c, h: h, data: data}, nil
}

// mapReadOnly maps a sealed memfd read-only, after checking that its size
// is the handle's.
func mapReadOnly(f *os.File, size int64) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("ipc: fstat: %w", err)
	}
	if st.Size != size || size <= 0 {
		return nil, fmt.Errorf("%w: buffer is %d bytes, handle says %d", ErrBadHandle, st.Size, size)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("ipc: mmap: %w", err)
	}
	return data, nil
}

// Bytes is the mapped memory, read-only: writing to it faults.
func (m *Mapping) Bytes() []byte { return m.data }

// Handle is the handle the mapping was opened from.
func (m *Mapping) Handle() Handle { return m.h }

// Close unmaps the buffer and releases the handle.
func (m *Mapping) Close(ctx context.Context) error {
	var err error
	m.once.Do(func() {
		err = unix.Munmap(m.data)
		m.data = nil
		if rerr := m.c.Release(ctx, m.h); err == nil {
			err = rerr
		}
	})
	return err
}

// NewHostBuffer creates a sealed host buffer in the launcher, filled by
// fill, and publishes it through the broker for every rank to open. The
// launcher holds the handle until b.Release(h).
func (b *Broker) NewHostBuffer(size int, fill func([]byte)) (Handle, error) {
	f, data, err := newMemfd(size)
	if err != nil {
		return Handle{}, err
	}
	defer f.Close()
	fill(data)
	if err := seal(f, &data); err != nil {
		return Handle{}, err
	}
	unix.Munmap(data)
	return b.Publish(KindHost, f, int64(size))
}

// dupFile duplicates f, close-on-exec.
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("ipc: dup: %w", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// checkSealed checks that f, published as a host buffer of size bytes, is
// a memfd sealed against writes and resizing, of that size: otherwise a
// publisher could change or shrink it under its readers (who would get
// SIGBUS).
func checkSealed(f *os.File, size int64) error {
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("%w: a host buffer must be a sealed memfd: %v", errBadRequest, err)
	}
	want := unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	if seals&want != want {
		return fmt.Errorf("%w: a host buffer must be sealed against writes and resizing (seals %#x)", errBadRequest, seals)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Size != size {
		return fmt.Errorf("%w: buffer is %d bytes, the request says %d", errBadRequest, st.Size, size)
	}
	return nil
}
