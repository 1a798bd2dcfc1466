package diag

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
)

// goMagic starts the build information the Go linker writes into every
// executable (what debug/buildinfo reads).
var goMagic = []byte("\xff Go buildinf:")

// isGoExecutable reports whether the ELF file at path is a Go program: it
// finds the .go.buildinfo section (or, without section headers, the start
// of the first writable segment, where the linker puts it) and checks for
// the build information's magic there. It reads a few headers rather than
// using debug/buildinfo, whose debug/elf brings compress/zlib, zstd and
// their package initialisation into every Go API rank, which links this
// package.
func isGoExecutable(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var ident [16]byte
	if _, err := f.ReadAt(ident[:], 0); err != nil || string(ident[:4]) != "\x7fELF" || ident[4] != 2 || ident[5] != 1 {
		return false // not a 64-bit little-endian ELF file: not one of ours
	}
	var h struct {
		Type, Machine              uint16
		Version                    uint32
		Entry, Phoff, Shoff        uint64
		Flags                      uint32
		Ehsize, Phentsize, Phnum   uint16
		Shentsize, Shnum, Shstrndx uint16
	}
	if binary.Read(io.NewSectionReader(f, 16, 48), binary.LittleEndian, &h) != nil {
		return false
	}
	if off, ok := buildinfoSection(f, h.Shoff, h.Shnum, h.Shentsize, h.Shstrndx); ok {
		return hasMagicAt(f, off, 1)
	}
	for i := range uint64(min(h.Phnum, 64)) {
		var p struct {
			Type, Flags                  uint32
			Off, Vaddr, Paddr, Filesz, _ uint64
		}
		if binary.Read(io.NewSectionReader(f, int64(h.Phoff+i*uint64(h.Phentsize)), 56), binary.LittleEndian, &p) != nil {
			return false
		}
		const ptLoad, pfW = 1, 2
		if p.Type == ptLoad && p.Flags&pfW != 0 {
			return hasMagicAt(f, p.Off, 64<<10/16) // aligned to 16 within the first 64 KiB
		}
	}
	return false
}

// buildinfoSection returns the file offset of the .go.buildinfo section.
func buildinfoSection(f *os.File, shoff uint64, shnum, shentsize, shstrndx uint16) (uint64, bool) {
	type section struct {
		Name, Type         uint32
		Flags, Addr, Off   uint64
		Size               uint64
		Link, Info         uint32
		Addralign, Entsize uint64
	}
	read := func(i uint16) (s section, ok bool) {
		err := binary.Read(io.NewSectionReader(f, int64(shoff+uint64(i)*uint64(shentsize)), 64), binary.LittleEndian, &s)
		return s, err == nil
	}
	if shoff == 0 || shentsize != 64 || shstrndx >= shnum {
		return 0, false
	}
	strtab, ok := read(shstrndx)
	if !ok {
		return 0, false
	}
	want := []byte(".go.buildinfo\x00")
	name := make([]byte, len(want))
	for i := range min(shnum, 4096) {
		s, ok := read(i)
		if !ok {
			return 0, false
		}
		if _, err := f.ReadAt(name, int64(strtab.Off+uint64(s.Name))); err == nil && bytes.Equal(name, want) {
			return s.Off, true
		}
	}
	return 0, false
}

// hasMagicAt reports whether goMagic is at off or at one of the next n-1
// 16-byte boundaries.
func hasMagicAt(f *os.File, off uint64, n int) bool {
	buf := make([]byte, 16*(n-1)+len(goMagic))
	m, _ := f.ReadAt(buf, int64(off))
	for i := 0; i+len(goMagic) <= m; i += 16 {
		if bytes.Equal(buf[i:i+len(goMagic)], goMagic) {
			return true
		}
	}
	return false
}
