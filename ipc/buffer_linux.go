package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// Buffer is shared host memory a rank creates: a memfd mapped read-write
// until it is published, then sealed and mapped read-only. No named object
// exists anywhere (no /dev/shm file), so nothing leaks when every process is
// killed: the kernel frees the memory with its last descriptor.
type Buffer struct {
	c    *Client
	m    *region
	h    Handle
	pool *BufferPool // nil for a buffer of its own (NewBuffer)
	once sync.Once
}

// NewBuffer creates a zeroed shared buffer of size bytes, writable through
// Bytes until Publish. A rank that hands off many buffers of one size
// should take them from a BufferPool instead.
func (c *Client) NewBuffer(size int) (*Buffer, error) {
	f, data, err := newMemfd(size)
	if err != nil {
		return nil, err
	}
	return &Buffer{c: c, m: &region{f: f, data: data}}, nil
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

// Bytes is the buffer's memory: writable before Publish, read-only after
// (for a pooled buffer, by contract: it must not be written while out),
// nil after Close.
func (b *Buffer) Bytes() []byte {
	if b.m == nil {
		return nil
	}
	return b.m.data
}

// Publish seals the buffer (no other process can ever write to it or
// resize it, and its content no longer changes while anyone holds it: for
// a buffer of its own the kernel sees to that, for a pooled one this rank
// must not write to it until it comes back from Get) and
// registers it with the broker, returning the handle to send to other
// ranks. This rank holds the handle until Close.
func (b *Buffer) Publish(ctx context.Context) (Handle, error) {
	if b.h.ID != 0 {
		return b.h, nil
	}
	if b.m == nil {
		return Handle{}, errors.New("ipc: publish of a closed buffer")
	}
	size := len(b.m.data)
	var flags byte
	if b.pool == nil {
		if err := seal(b.m.f, &b.m.data); err != nil {
			return Handle{}, err
		}
	} else {
		if err := b.m.sealFuture(); err != nil {
			return Handle{}, err
		}
		flags = publishNotifyFree
	}
	h, err := b.c.publishFile(ctx, KindHost, b.m.f, int64(size), flags)
	if err != nil {
		return Handle{}, err
	}
	if b.pool != nil {
		pool, m := b.pool, b.m
		b.c.onFree(h, func() { pool.put(m) }, func() { pool.discard(m) })
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

// sealFuture seals a pooled memfd, once, against resizing and against
// writes through any mapping made from now on: the creator's own mapping
// stays writable, for the buffer's next use. (Making it read-only while the
// buffer is out, and writable again, costs two page-table walks per use:
// for 64 MiB, about a sixth of filling it.)
func (m *region) sealFuture() error {
	if m.sealed {
		return nil
	}
	seals := unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(m.f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("ipc: seal buffer: %w", err)
	}
	m.sealed = true
	return nil
}

// Close releases this rank's hold on the buffer; other holders keep it
// alive. A buffer of its own is unmapped; a pooled buffer goes back to its
// pool once every holder has released it (at once if it was never
// published).
func (b *Buffer) Close(ctx context.Context) error {
	var err error
	b.once.Do(func() {
		m := b.m
		b.m = nil
		switch {
		case b.pool == nil:
			m.free()
			if b.h.ID != 0 {
				err = b.c.Release(ctx, b.h)
			}
		case b.h.ID == 0:
			b.pool.put(m)
		default: // back when freed, or discarded if it cannot come back
			err = b.c.Release(ctx, b.h)
			b.c.releasedFree(b.h, err)
		}
	})
	return err
}

// Mapping is a published buffer opened by a rank: read-only memory.
type Mapping struct {
	c      *Client
	h      Handle
	data   []byte
	pooled fileID // the pooled buffer mapped, kept in maps after Close; zero otherwise
	once   sync.Once
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
	m := &Mapping{c: c, h: h}
	m.data, m.pooled, err = mapReadOnly(f, h.Size)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// mapReadOnly maps a sealed memfd read-only, after checking that its size
// is the handle's. A pooled buffer (sealed against future writes only)
// reuses this rank's mapping of it from an earlier hand-off, if any: its
// key is returned.
func mapReadOnly(f *os.File, size int64) ([]byte, fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fileID{}, fmt.Errorf("ipc: fstat: %w", err)
	}
	if st.Size != size || size <= 0 {
		return nil, fileID{}, fmt.Errorf("%w: buffer is %d bytes, handle says %d", ErrBadHandle, st.Size, size)
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fileID{}, fmt.Errorf("ipc: seals: %w", err)
	}
	var key fileID
	if seals&unix.F_SEAL_WRITE == 0 {
		key = fileID{st.Dev, st.Ino}
		if data := maps.take(key, f, size); data != nil {
			return data, key, nil
		}
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fileID{}, fmt.Errorf("ipc: mmap: %w", err)
	}
	if key != (fileID{}) && !maps.add(key, f, data) {
		key = fileID{}
	}
	return data, key, nil
}

// Bytes is the mapped memory, read-only: writing to it faults.
func (m *Mapping) Bytes() []byte { return m.data }

// Handle is the handle the mapping was opened from.
func (m *Mapping) Handle() Handle { return m.h }

// Close unmaps the buffer and releases the handle. The memory must not be
// used after Close: a pooled buffer is reused by its producer.
func (m *Mapping) Close(ctx context.Context) error {
	var err error
	m.once.Do(func() {
		if m.pooled != (fileID{}) {
			maps.done(m.pooled)
		} else {
			err = unix.Munmap(m.data)
		}
		m.data = nil
		if rerr := m.c.Release(ctx, m.h); err == nil {
			err = rerr
		}
	})
	return err
}

// fileID names a file (a memfd) by device and inode: a key, not proof of
// identity, since shmem inode numbers can wrap (32 bits without
// CONFIG_TMPFS_INODE64). The cache confirms with kcmp that the descriptor
// it kept and the one just received are the same open file.
type fileID struct{ dev, ino uint64 }

// mapCache keeps a rank's read-only mappings of pooled buffers after their
// Mapping is closed: a pooled buffer comes back from its producer again and
// again, and mapping 64 MiB afresh (and unmapping it) costs more than a
// third of reading it. Idle mappings keep their memory alive even after
// the producer frees the buffer, so at most maxIdleMaps of them, and
// maxIdleBytes in all, are kept; the least recently used go first. Every
// hand-off of one memfd carries the same open file (the producer's, passed
// on by the broker), which the cache keeps a descriptor of to compare.
type mapCache struct {
	mu        sync.Mutex
	maps      map[fileID]*cachedMap
	idle      []fileID // least recently used first
	idleBytes int
}

type cachedMap struct {
	f     *os.File // a duplicate of the descriptor mapped
	data  []byte
	users int
}

const (
	maxIdleMaps  = 4
	maxIdleBytes = 512 << 20
)

var maps = mapCache{maps: map[fileID]*cachedMap{}}

// take returns the mapping kept for f (key names it), if any, of size
// bytes. A kept mapping of another file under the same key is dropped if
// idle.
func (c *mapCache) take(key fileID, f *os.File, size int64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.maps[key]
	if m == nil {
		return nil
	}
	if !sameFile(m.f, f) || int64(len(m.data)) != size {
		if m.users == 0 {
			c.drop(key)
		}
		return nil
	}
	if m.users == 0 {
		c.idle = slices.DeleteFunc(c.idle, func(k fileID) bool { return k == key })
		c.idleBytes -= len(m.data)
	}
	m.users++
	return m.data
}

// add keeps data, a new mapping of f, in use, under key; false if it is
// not kept (another mapping is kept under key and in use, or f cannot be
// duplicated or compared), and the caller unmaps data itself.
func (c *mapCache) add(key fileID, f *os.File, data []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.maps[key] != nil {
		return false
	}
	dup, err := dupFile(f)
	if err != nil {
		return false
	}
	if !sameFile(dup, f) { // kcmp unavailable: entries could not be checked
		dup.Close()
		return false
	}
	c.maps[key] = &cachedMap{f: dup, data: data, users: 1}
	return true
}

// done marks one use of key's mapping over, and unmaps the least recently
// used idle mappings beyond the limits.
func (c *mapCache) done(key fileID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.maps[key]
	if m == nil {
		return
	}
	if m.users--; m.users > 0 {
		return
	}
	c.idle = append(c.idle, key)
	c.idleBytes += len(m.data)
	for len(c.idle) > maxIdleMaps || c.idleBytes > maxIdleBytes {
		c.drop(c.idle[0])
	}
}

// drop unmaps key's idle mapping; c.mu is held.
func (c *mapCache) drop(key fileID) {
	m := c.maps[key]
	delete(c.maps, key)
	c.idle = slices.DeleteFunc(c.idle, func(k fileID) bool { return k == key })
	c.idleBytes -= len(m.data)
	unix.Munmap(m.data)
	m.f.Close()
}

// sameFile reports whether a and b are the same open file (kcmp
// KCMP_FILE), false if that cannot be told.
func sameFile(a, b *os.File) bool {
	pid := uintptr(os.Getpid())
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, pid, pid, kcmpFile, a.Fd(), b.Fd(), 0)
	return errno == 0 && r == 0
}

// kcmpFile is KCMP_FILE from linux/kcmp.h.
const kcmpFile = 0

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
// a memfd of that size sealed against resizing and against writes (all
// writes, or, for a pooled buffer, writes through any mapping made after
// the seal): otherwise a reader could write to it, or its publisher shrink
// it under its readers (who would get SIGBUS).
func checkSealed(f *os.File, size int64) error {
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("%w: a host buffer must be a sealed memfd: %v", errBadRequest, err)
	}
	want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	if seals&want != want || seals&(unix.F_SEAL_WRITE|unix.F_SEAL_FUTURE_WRITE) == 0 {
		return fmt.Errorf("%w: a host buffer must be sealed against writes and resizing (seals %#x)", errBadRequest, seals)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Size != size {
		return fmt.Errorf("%w: buffer is %d bytes, the request says %d", errBadRequest, st.Size, size)
	}
	return nil
}
