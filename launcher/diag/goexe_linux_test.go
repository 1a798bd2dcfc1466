package diag

import (
	"debug/buildinfo"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestIsGoExecutable checks isGoExecutable against debug/buildinfo, which
// it stands in for, on Go and other programs, and on a Go program whose
// section headers are gone (the writable-segment path).
func TestIsGoExecutable(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	noSections := filepath.Join(t.TempDir(), "nosections")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(b[0x28:], 0) // e_shoff
	binary.LittleEndian.PutUint16(b[0x3c:], 0) // e_shnum
	binary.LittleEndian.PutUint16(b[0x3e:], 0) // e_shstrndx
	if err := os.WriteFile(noSections, b, 0o755); err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(t.TempDir(), "text")
	if err := os.WriteFile(text, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	paths := []struct {
		path string
		goes bool
	}{
		{self, true},
		{noSections, true},
		{"/bin/sh", false},
		{text, false},
		{filepath.Join(t.TempDir(), "missing"), false},
	}
	if py, err := exec.LookPath("python3"); err == nil {
		paths = append(paths, struct {
			path string
			goes bool
		}{py, false})
	}
	for _, p := range paths {
		got := isGoExecutable(p.path)
		_, oracleErr := buildinfo.ReadFile(p.path)
		if got != p.goes || got != (oracleErr == nil) {
			t.Errorf("isGoExecutable(%s) = %v; want %v (debug/buildinfo: %v)", p.path, got, p.goes, oracleErr)
		}
	}
}
