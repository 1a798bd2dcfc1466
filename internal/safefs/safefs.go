// Package safefs makes the directories and files a job writes (its rank
// logs, summary and error files) so that nobody else who can write to a
// directory on the way can redirect them. Run as root with its logs in a
// world-writable directory, a launcher that followed the links another user
// planted there would overwrite any file on the machine.
//
// A caller opens the directory it was told to use (MkdirAll or OpenDir),
// which walks the path one component at a time, and then makes directories
// (Dir.MkdirAll) and opens files (Dir.Create) relative to the directory it
// holds open, never by name from the root again. The rules:
//
//   - A symbolic link on the way to the named directory is followed only
//     where nobody else could have made it: in a directory that others
//     cannot write, or owned by this user or by that directory's owner (the
//     kernel's fs.protected_symlinks rule, enforced here whatever the
//     sysctl says). Beneath a directory held open, no link is followed at
//     all (openat2 with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS where the kernel
//     has it, else O_NOFOLLOW on each component).
//   - Directories are made with mkdir. One that exists already is accepted
//     only if it is a real directory and, when it sits in a directory
//     others can write, owned by this user (or by that directory's owner).
//   - A file is opened with O_NOFOLLOW, truncated only after it is known to
//     be a regular file and, in a directory others can write, owned by
//     this user with no other hard link.
//
// Anything else is a *LinkError or an *OwnerError naming the path.
package safefs

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// LinkError is a path component that is a symbolic link safefs will not
// follow: one it did not make.
type LinkError struct {
	Path string // the link
}

func (e *LinkError) Error() string {
	return fmt.Sprintf("safefs: %s is a symbolic link this user did not make; refusing to follow it", e.Path)
}

// OwnerError is a directory or file that already exists in a directory
// others can write, and belongs to another user: whoever owns it can
// replace what is beneath it.
type OwnerError struct {
	Path string
	UID  int // its owner
}

func (e *OwnerError) Error() string {
	return fmt.Sprintf("safefs: %s is owned by uid %d, not by this user, in a directory others can write", e.Path, e.UID)
}

// KindError is a path that exists but is not what was asked for: not a
// directory, or not a regular file (a FIFO, a device), or a file with
// several hard links in a directory others can write.
type KindError struct {
	Path string
	Want string // "a directory", "a regular file", "a file with one link"
}

func (e *KindError) Error() string {
	return fmt.Sprintf("safefs: %s is not %s", e.Path, e.Want)
}

// WriteFile writes a file at path with write, in the directory path names
// (which must exist: see OpenDir for the rules on the way there): the
// file is created with perm (less the umask) or truncated. Being named by
// the user, path itself may be a link, or a device such as /dev/stderr,
// where nobody else could have made it (see OpenDir); in a directory
// others can write it must be this user's regular file with one link.
// When write or the close fails the partial file is removed.
func WriteFile(path string, perm fs.FileMode, write func(io.Writer) error) error {
	d, err := OpenDir(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	name := filepath.Base(path)
	f, err := d.create(name, perm, true)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err == nil {
		err = write(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if st != nil && st.Mode().IsRegular() { // not /dev/full
			_ = d.Remove(name)
		}
		return fmt.Errorf("safefs: write %s: %w", path, err)
	}
	return nil
}

// Check reports whether a file could be written at path by WriteFile: its
// directory is reached by the rules above and the name is not a link
// another user made, a directory, or another user's file in a directory
// others can write. A missing file is fine. It lets a caller refuse before it starts work
// whose result it would write there.
func Check(path string) error {
	d, err := OpenDir(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.check(filepath.Base(path))
}

// Below returns perm with read and write bits for the group and for others
// kept only where dir lets them read: a file in dir, or about what is in
// dir, is never more readable than dir itself. A dir that cannot be
// examined leaves perm to the owner alone.
func Below(dir string, perm fs.FileMode) fs.FileMode {
	st, err := os.Stat(dir)
	if err != nil {
		return perm & 0o700
	}
	mode := st.Mode().Perm()
	keep := fs.FileMode(0o700)
	if mode&0o050 == 0o050 {
		keep |= 0o070
	}
	if mode&0o005 == 0o005 {
		keep |= 0o007
	}
	return perm & keep
}
