//go:build linux

package ipc

import (
	"bytes"
	"errors"
	"testing"
)

func TestHeaderEncoding(t *testing.T) {
	h := frameHeader{Version: wireVersion, Type: FrameReply, NFiles: 3, ID: 0x0102030405060708, Length: 0x0a0b0c0d}
	want := []byte{
		'M', 'P', 'S', // magic
		1,                      // version
		6,                      // type (FrameReply)
		0,                      // flags
		3,                      // nfds
		0,                      // reserved
		1, 2, 3, 4, 5, 6, 7, 8, // id
		0x0a, 0x0b, 0x0c, 0x0d, // length
	}
	if got := h.encode(); !bytes.Equal(got, want) {
		t.Errorf("encode() = % x; want % x", got, want)
	}
	if got := appendHeader([]byte("x"), h); !bytes.Equal(got, append([]byte("x"), want...)) {
		t.Errorf("appendHeader(x) = % x; want x + % x", got, want)
	}
	got, err := parseHeader(append(want, "payload"...))
	if err != nil || got != h {
		t.Errorf("parseHeader(% x) = %+v, %v; want %+v", want, got, err, h)
	}
}

func TestDecodeHeaderRejects(t *testing.T) {
	valid := frameHeader{Version: wireVersion, Type: FrameHello}.encode()
	mod := func(i int, v byte) []byte {
		b := bytes.Clone(valid)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", valid[:headerSize-1]},
		{"magic", mod(0, 'm')},
		{"version", mod(3, 2)},
		{"type zero", mod(4, 0)},
		{"flags", mod(5, 1)},
		{"nfds", mod(6, MaxFiles+1)},
		{"reserved", mod(7, 0xff)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if h, err := parseHeader(tc.b); !errors.Is(err, ErrBadFrame) {
				t.Errorf("parseHeader(% x) = %+v, %v; want ErrBadFrame", tc.b, h, err)
			}
		})
	}
}

func TestFrameTypeString(t *testing.T) {
	for typ, want := range map[FrameType]string{FrameHello: "hello", FrameClose: "close", 0: "type(0)", 200: "type(200)"} {
		if got := typ.String(); got != want {
			t.Errorf("FrameType(%d).String() = %q; want %q", uint8(typ), got, want)
		}
	}
}

// FuzzDecodeHeader: never panics, every error wraps ErrBadFrame, and any
// accepted header encodes back to the bytes it came from.
func FuzzDecodeHeader(f *testing.F) {
	f.Add(frameHeader{Version: wireVersion, Type: FrameRequest, NFiles: 2, ID: 7, Length: 5}.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("parseHeader(% x) = %v; want an error wrapping ErrBadFrame", b, err)
			}
			return
		}
		if enc := h.encode(); !bytes.Equal(enc, b[:headerSize]) {
			t.Fatalf("parseHeader(% x) = %+v, which encodes as % x", b, h, enc)
		}
		if h2, err := parseHeader(h.encode()); err != nil || h2 != h {
			t.Fatalf("parseHeader(encode(%+v)) = %+v, %v", h, h2, err)
		}
	})
}
