//go:build !linux

package ipc

import (
	"context"
	"os"
)

// Buffer is shared host memory; it needs Linux (memfd).
type Buffer struct{}

// NewBuffer is not supported off Linux.
func (c *Client) NewBuffer(int) (*Buffer, error) { return nil, errUnsupported }

// Bytes is nil off Linux.
func (b *Buffer) Bytes() []byte { return nil }

// Publish is not supported off Linux.
func (b *Buffer) Publish(context.Context) (Handle, error) { return Handle{}, errUnsupported }

// Close does nothing off Linux.
func (b *Buffer) Close(context.Context) error { return nil }

// Mapping is an opened buffer; it needs Linux.
type Mapping struct{}

// Open is not supported off Linux.
func (c *Client) Open(context.Context, Handle) (*Mapping, error) { return nil, errUnsupported }

// Bytes is nil off Linux.
func (m *Mapping) Bytes() []byte { return nil }

// Handle is the zero Handle off Linux.
func (m *Mapping) Handle() Handle { return Handle{} }

// Close does nothing off Linux.
func (m *Mapping) Close(context.Context) error { return nil }

// NewHostBuffer is not supported off Linux.
func (b *Broker) NewHostBuffer(int, func([]byte)) (Handle, error) { return Handle{}, errUnsupported }

func dupFile(*os.File) (*os.File, error) { return nil, errUnsupported }

func checkSealed(*os.File, int64) error { return errUnsupported }

// BufferPool recycles shared buffers; it needs Linux (memfd).
type BufferPool struct{}

// ErrPoolClosed is returned by Get after Close.
var ErrPoolClosed = errUnsupported

// NewBufferPool is not supported off Linux.
func (c *Client) NewBufferPool(int, int) (*BufferPool, error) { return nil, errUnsupported }

// Get is not supported off Linux.
func (p *BufferPool) Get(context.Context) (*Buffer, error) { return nil, errUnsupported }

// Close does nothing off Linux.
func (p *BufferPool) Close() {}
