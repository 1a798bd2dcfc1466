package safefs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir is a directory held open; what is made beneath it is made relative
// to it, so that renaming or replacing a directory on its path does not
// move its files elsewhere. A Dir is safe for concurrent use. Close it
// when done.
type Dir struct {
	f *os.File
}

// Name is the path the directory was opened by.
func (d *Dir) Name() string { return d.f.Name() }

// Close closes the directory.
func (d *Dir) Close() error { return d.f.Close() }

func (d *Dir) fd() int { return int(d.f.Fd()) }

// dup returns a close-on-exec copy of d's descriptor.
func (d *Dir) dup() (int, error) {
	fd, err := unix.FcntlInt(uintptr(d.fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "dup", Path: d.Name(), Err: err}
	}
	return fd, nil
}

// MkdirAll opens the directory path, making what is missing of it with
// perm (less the umask), by the rules of the package doc.
func MkdirAll(path string, perm fs.FileMode) (*Dir, error) {
	return walk(path, perm, true)
}

// OpenDir opens the existing directory path by the rules of the package
// doc.
func OpenDir(path string) (*Dir, error) {
	return walk(path, 0, false)
}

// walk opens path one component at a time from / (or the working
// directory), following a link only where nobody else could have made it.
func walk(path string, perm fs.FileMode, create bool) (*Dir, error) {
	path = filepath.Clean(path)
	start, rest := ".", path
	if filepath.IsAbs(path) {
		start, rest = "/", strings.TrimPrefix(path, "/")
	}
	fd, err := unix.Open(start, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: start, Err: err}
	}
	done := start
	for _, name := range strings.Split(rest, "/") {
		if name == "" || name == "." {
			continue
		}
		at := filepath.Join(done, name)
		next, err := step(fd, at, name, perm, create, true)
		unix.Close(fd)
		if err != nil {
			return nil, err
		}
		fd, done = next, at
	}
	return &Dir{f: os.NewFile(uintptr(fd), path)}, nil
}

// step opens the directory name in the directory parent (at is its path,
// for errors), making it first when create is set. A link is followed
// only when trusted is set and nobody else could have made it.
func step(parent int, at, name string, perm fs.FileMode, create, trusted bool) (int, error) {
	var pst unix.Stat_t
	if err := unix.Fstat(parent, &pst); err != nil {
		return -1, &fs.PathError{Op: "stat", Path: filepath.Dir(at), Err: err}
	}
	shared := pst.Mode&0o002 != 0
	if create && name != ".." {
		if err := unix.Mkdirat(parent, name, uint32(perm.Perm())); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, &fs.PathError{Op: "mkdir", Path: at, Err: err}
		}
	}
	var lst unix.Stat_t
	if err := unix.Fstatat(parent, name, &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return -1, &fs.PathError{Op: "stat", Path: at, Err: err}
	}
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW
	if lst.Mode&unix.S_IFMT == unix.S_IFLNK {
		if !trusted || (shared && !ours(lst.Uid, pst.Uid)) {
			return -1, &LinkError{Path: at}
		}
		flags &^= unix.O_NOFOLLOW
	}
	fd, err := unix.Openat(parent, name, flags, 0)
	switch {
	case errors.Is(err, unix.ELOOP):
		return -1, &LinkError{Path: at} // replaced by a link since the stat
	case err != nil && create: // as os.MkdirAll says it: "mkdir /x/afile: not a directory"
		return -1, &fs.PathError{Op: "mkdir", Path: at, Err: err}
	case err != nil:
		return -1, &fs.PathError{Op: "open", Path: at, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, &fs.PathError{Op: "stat", Path: at, Err: err}
	}
	if shared && flags&unix.O_NOFOLLOW != 0 && !ours(st.Uid, pst.Uid) {
		unix.Close(fd)
		return -1, &OwnerError{Path: at, UID: int(st.Uid)}
	}
	return fd, nil
}

// ours reports whether a file owned by uid in a directory owned by
// dirUID can only have been made by this user or the directory's owner.
func ours(uid, dirUID uint32) bool {
	me := uint32(os.Geteuid())
	return uid == me || uid == dirUID
}

// MkdirAll opens the directory rel beneath d, making what is missing of it
// with perm (less the umask). No link beneath d is followed.
func (d *Dir) MkdirAll(rel string, perm fs.FileMode) (*Dir, error) {
	fd, err := d.beneath(rel, perm, true)
	if err != nil {
		return nil, err
	}
	return &Dir{f: os.NewFile(uintptr(fd), filepath.Join(d.Name(), rel))}, nil
}

// beneath opens (making it first when create is set) the directory rel
// beneath d one O_NOFOLLOW component at a time, and returns its fd.
func (d *Dir) beneath(rel string, perm fs.FileMode, create bool) (int, error) {
	rel = filepath.Clean(rel)
	if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return -1, &fs.PathError{Op: "open", Path: rel, Err: errors.New("not beneath " + d.Name())}
	}
	fd, err := d.dup()
	if err != nil {
		return -1, err
	}
	at := d.Name()
	for _, name := range strings.Split(rel, "/") {
		if name == "." {
			continue
		}
		at = filepath.Join(at, name)
		next, err := step(fd, at, name, perm, create, false)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// openBeneath opens the existing directory rel beneath d without following
// any link: in one openat2 (RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) where the
// kernel has it, else one O_NOFOLLOW component at a time.
func (d *Dir) openBeneath(rel string) (int, error) {
	at := filepath.Join(d.Name(), rel)
	how := &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(d.fd(), rel, how)
	switch {
	case err == nil:
		return fd, nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return -1, &LinkError{Path: at}
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM): // no openat2 (or a seccomp filter)
		return d.beneath(rel, 0, false)
	}
	return -1, &fs.PathError{Op: "open", Path: at, Err: err}
}

// split opens the directory of rel beneath d and returns its fd (to be
// closed) and rel's last component.
func (d *Dir) split(rel string) (int, string, error) {
	dir, name := filepath.Split(filepath.Clean(rel))
	if dir == "" {
		fd, err := d.dup()
		return fd, name, err
	}
	fd, err := d.openBeneath(filepath.Clean(dir))
	return fd, name, err
}

// Create opens the file rel beneath d for writing, creating it with perm
// (less the umask) or truncating it, by the rules of the package doc.
func (d *Dir) Create(rel string, perm fs.FileMode) (*os.File, error) {
	return d.create(rel, perm, false)
}

// create is Create; a file the user named (named) may be a link where
// nobody else could have made it, or a device where others cannot write.
func (d *Dir) create(rel string, perm fs.FileMode, named bool) (*os.File, error) {
	dirfd, name, err := d.split(rel)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dirfd)
	at := filepath.Join(d.Name(), rel)
	// O_NONBLOCK: a FIFO planted here must not block the open.
	flags := unix.O_WRONLY | unix.O_CREAT | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK
	if named {
		if err := checkAt(dirfd, name, at); errors.Is(err, errTrustedLink) {
			flags &^= unix.O_NOFOLLOW
		} else if err != nil {
			return nil, err
		}
	}
	fd, err := unix.Openat(dirfd, name, flags, uint32(perm.Perm()))
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, &LinkError{Path: at}
	case errors.Is(err, unix.ENXIO): // a FIFO nobody reads
		return nil, &KindError{Path: at, Want: "a regular file"}
	case err != nil:
		return nil, &fs.PathError{Op: "open", Path: at, Err: err}
	}
	regular, err := fileOK(dirfd, fd, at, named)
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err == nil && regular {
		if err = unix.Ftruncate(fd, 0); err != nil {
			err = &fs.PathError{Op: "truncate", Path: at, Err: err}
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), at), nil
}

// fileOK checks the file fd opened in dirfd before it is truncated, and
// reports whether it is a regular file. Only a named file may be anything
// else, and only in a directory others cannot write.
func fileOK(dirfd, fd int, at string, named bool) (regular bool, err error) {
	var st, pst unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, &fs.PathError{Op: "stat", Path: at, Err: err}
	}
	if err := unix.Fstat(dirfd, &pst); err != nil {
		return false, &fs.PathError{Op: "stat", Path: filepath.Dir(at), Err: err}
	}
	regular = st.Mode&unix.S_IFMT == unix.S_IFREG
	shared := pst.Mode&0o002 != 0
	switch {
	case !regular && (shared || !named):
		return false, &KindError{Path: at, Want: "a regular file"}
	case !shared:
		return regular, nil
	case !ours(st.Uid, pst.Uid):
		return false, &OwnerError{Path: at, UID: int(st.Uid)}
	case st.Nlink > 1:
		return false, &KindError{Path: at, Want: "a file with one link"}
	}
	return regular, nil
}

// errTrustedLink is checkAt's answer for a link nobody else could have
// made.
var errTrustedLink = errors.New("safefs: a link nobody else could have made")

// check reports whether WriteFile could write name in d: see Check.
func (d *Dir) check(name string) error {
	err := checkAt(d.fd(), name, filepath.Join(d.Name(), name))
	if errors.Is(err, errTrustedLink) {
		return nil
	}
	return err
}

// checkAt checks the name a user gave in dirfd (at is its path): a link
// is errTrustedLink where nobody else could have made it, else a
// *LinkError; a directory is refused, and in a directory others can
// write, so is another user's file. A missing name is fine.
func checkAt(dirfd int, name, at string) error {
	var st, pst unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return &fs.PathError{Op: "stat", Path: at, Err: err}
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return &KindError{Path: at, Want: "a regular file"}
	}
	if err := unix.Fstat(dirfd, &pst); err != nil {
		return &fs.PathError{Op: "stat", Path: filepath.Dir(at), Err: err}
	}
	shared := pst.Mode&0o002 != 0
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK && shared && !ours(st.Uid, pst.Uid):
		return &LinkError{Path: at}
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return errTrustedLink
	case shared && !ours(st.Uid, pst.Uid):
		return &OwnerError{Path: at, UID: int(st.Uid)}
	}
	return nil
}

// Remove removes the file rel beneath d (a link itself, never what it
// points to). A missing file is not an error.
func (d *Dir) Remove(rel string) error {
	dirfd, name, err := d.split(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return &fs.PathError{Op: "remove", Path: filepath.Join(d.Name(), rel), Err: err}
	}
	return nil
}

var _ fmt.Stringer = (*Dir)(nil)

// String is the directory's path.
func (d *Dir) String() string { return d.Name() }
