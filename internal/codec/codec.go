// Package codec is how values travel between the launcher and its ranks,
// shared by package ipc (Queue and Pipe values) and launcher/mp (a rank's
// arguments and results, a Pool's chunks of items). It is internal: the
// encoding is the module's own, and both ends always run the same binary.
package codec

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"reflect"
	"slices"
	"unsafe"
)

// Values travel between the launcher and its ranks encoded with
// encoding/gob, except slices of plain data (numbers, bools, and arrays and
// structs of them: no pointers, strings, slices or maps), which travel as
// their raw bytes. Both ends run the same binary, so the memory layout is
// the same on both; a Pool chunk of a million ints then costs a copy, not a
// million varint encodings, and a small int on a Queue costs no gob
// encoder.

// Encode gob-encodes v.
func Encode(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Decode gob-decodes b into v.
func Decode(b []byte, v any) error {
	return gob.NewDecoder(bytes.NewReader(b)).Decode(v)
}

// The first byte of an AppendSlice encoding.
const (
	sliceGob = 0 // a gob-encoded []T follows
	sliceRaw = 1 // a uvarint count, a pad length byte, pad bytes, then count*sizeof(T) raw bytes
)

var errBadSlice = errors.New("codec: bad encoded slice")

// AppendSlice appends the encoding of s to dst: raw bytes when T is plain
// data, else gob. The raw bytes are padded to T's alignment relative to the
// start of dst, so that a receiver that gets dst whole (as a frame payload,
// which is a fresh, aligned allocation) can use them in place.
func AppendSlice[T any](dst []byte, s []T) ([]byte, error) {
	if !IsPlain(reflect.TypeFor[T]()) {
		b, err := Encode(s)
		return append(append(dst, sliceGob), b...), err
	}
	size, align := int(unsafe.Sizeof(*new(T))), int(unsafe.Alignof(*new(T)))
	dst = slices.Grow(dst, 2+binary.MaxVarintLen64+align+len(s)*size)
	dst = binary.AppendUvarint(append(dst, sliceRaw), uint64(len(s)))
	pad := (align - (len(dst)+1)%align) % align
	dst = append(dst, byte(pad))
	dst = append(dst, make([]byte, pad)...)
	if size == 0 || len(s) == 0 {
		return dst, nil
	}
	return append(dst, unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*size)...), nil
}

// DecodeSlice decodes what AppendSlice[T] encoded. Raw data that is
// aligned for T is used in place: the result then shares b's memory.
func DecodeSlice[T any](b []byte) ([]T, error) {
	if len(b) == 0 {
		return nil, errBadSlice
	}
	if b[0] == sliceGob {
		var s []T
		err := Decode(b[1:], &s)
		return s, err
	}
	if b[0] != sliceRaw || !IsPlain(reflect.TypeFor[T]()) {
		return nil, errBadSlice
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || 1+k >= len(b) || 2+k+int(b[1+k]) > len(b) {
		return nil, errBadSlice
	}
	data := b[2+k+int(b[1+k]):]
	size, align := uint64(unsafe.Sizeof(*new(T))), uintptr(unsafe.Alignof(*new(T)))
	switch {
	case size == 0 && (len(data) != 0 || n > 1<<31),
		size > 0 && (n > uint64(len(data))/size || n*size != uint64(len(data))):
		return nil, errBadSlice
	case size == 0 || n == 0:
		return make([]T, n), nil
	case uintptr(unsafe.Pointer(unsafe.SliceData(data)))%align == 0:
		return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(data))), n), nil
	}
	s := make([]T, n)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(data)), data)
	return s, nil
}

// IsPlain reports whether values of t are plain data: their bytes are the
// whole value, with no pointer into the sending process's memory.
func IsPlain(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return true
	case reflect.Array:
		return IsPlain(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !IsPlain(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}

// AppendField appends b to dst with a uvarint length before it.
func AppendField(dst, b []byte) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(b))), b...)
}

// CutField splits a field written by AppendField off the front of b.
func CutField(b []byte) (field, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, false
	}
	return b[k : k+int(n)], b[k+int(n):], true
}
