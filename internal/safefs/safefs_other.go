//go:build !linux

package safefs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Dir is a directory by path (off Linux, paths are not held open: each
// call checks its components with Lstat again, which narrows but does not
// close the window a rename opens). Close it when done.
type Dir struct {
	path string
}

// Name is the path the directory was opened by.
func (d *Dir) Name() string { return d.path }

// String is the directory's path.
func (d *Dir) String() string { return d.path }

// Close releases the directory.
func (d *Dir) Close() error { return nil }

// MkdirAll opens the directory path, making what is missing of it with
// perm (less the umask).
func MkdirAll(path string, perm fs.FileMode) (*Dir, error) {
	if err := os.MkdirAll(path, perm); err != nil {
		return nil, err
	}
	return OpenDir(path)
}

// OpenDir opens the existing directory path.
func OpenDir(path string) (*Dir, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, &KindError{Path: path, Want: "a directory"}
	}
	return &Dir{path: filepath.Clean(path)}, nil
}

// MkdirAll opens the directory rel beneath d, making what is missing of it
// with perm (less the umask). No link beneath d is followed.
func (d *Dir) MkdirAll(rel string, perm fs.FileMode) (*Dir, error) {
	at := d.path
	for _, name := range strings.Split(filepath.ToSlash(filepath.Clean(rel)), "/") {
		at = filepath.Join(at, name)
		if err := os.Mkdir(at, perm); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		if err := notLink(at, true); err != nil {
			return nil, err
		}
	}
	return &Dir{path: filepath.Join(d.path, rel)}, nil
}

// notLink checks that at is not a symbolic link, and is a directory when
// dir is set.
func notLink(at string, dir bool) error {
	st, err := os.Lstat(at)
	switch {
	case err != nil:
		return err
	case st.Mode()&fs.ModeSymlink != 0:
		return &LinkError{Path: at}
	case dir && !st.IsDir():
		return &KindError{Path: at, Want: "a directory"}
	}
	return nil
}

// Create opens the file rel beneath d for writing, creating it with perm
// (less the umask) or truncating it; not through a link.
func (d *Dir) Create(rel string, perm fs.FileMode) (*os.File, error) {
	if err := d.check(rel); err != nil {
		return nil, err
	}
	return os.OpenFile(filepath.Join(d.path, rel), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
}

// create is Create; off Linux a named file is held to the same rules.
func (d *Dir) create(rel string, perm fs.FileMode, _ bool) (*os.File, error) {
	return d.Create(rel, perm)
}

func (d *Dir) check(rel string) error {
	err := notLink(filepath.Join(d.path, rel), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Remove removes the file rel beneath d. A missing file is not an error.
func (d *Dir) Remove(rel string) error {
	err := os.Remove(filepath.Join(d.path, rel))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
