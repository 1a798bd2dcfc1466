package live

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// maxFile bounds a state file a reader accepts.
const maxFile = 4 << 20

// dirsFor lists the directories where user uid's launchers publish, the
// one a launcher of this user writes first (see stateDir).
func dirsFor(uid int) []string {
	var dirs []string
	if uid == os.Geteuid() {
		if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" && filepath.IsAbs(x) {
			dirs = append(dirs, filepath.Join(x, "mpspawn"))
		}
	}
	run := filepath.Join("/run/user", strconv.Itoa(uid), "mpspawn")
	if len(dirs) == 0 || dirs[0] != run {
		dirs = append(dirs, run)
	}
	return append(dirs, filepath.Join("/tmp", "mpspawn-"+strconv.Itoa(uid)))
}

// stateDir makes (or checks) the directory this user's launchers publish
// in: $XDG_RUNTIME_DIR/mpspawn when that is this user's directory, else
// /tmp/mpspawn-UID. It is made with mode 0700; one that exists must be a
// real directory (no link is followed), this user's, and closed to others.
func stateDir() (string, error) {
	uid := os.Geteuid()
	dir := filepath.Join("/tmp", "mpspawn-"+strconv.Itoa(uid))
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" && filepath.IsAbs(x) {
		if fi, err := os.Lstat(x); err == nil && fi.IsDir() && ownedBy(fi, uid) {
			dir = filepath.Join(x, "mpspawn")
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("live: state dir: %w", err)
	}
	fi, err := os.Lstat(dir)
	switch {
	case err != nil:
		return "", fmt.Errorf("live: state dir: %w", err)
	case !fi.IsDir():
		return "", fmt.Errorf("live: state dir %s: not a directory (a link is not followed)", dir)
	case !ownedBy(fi, uid):
		return "", fmt.Errorf("live: state dir %s: owned by another user", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return "", fmt.Errorf("live: state dir %s: mode %v: others may use it", dir, fi.Mode().Perm())
	}
	return dir, nil
}

func ownedBy(fi fs.FileInfo, uid int) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == uid
}

// writeFile replaces dir/PID.json with data at once (a reader sees the
// old file or the new one): a temporary file beside it, renamed.
func writeFile(dir string, pid int, data []byte) error {
	tmp := filepath.Join(dir, "."+strconv.Itoa(pid)+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("live: write state: %w", err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, fileName(dir, pid))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("live: write state: %w", err)
	}
	return nil
}

func fileName(dir string, pid int) string { return filepath.Join(dir, strconv.Itoa(pid)+".json") }

// readFile reads and verifies the state file of launcher pid at path: at
// most 4 MiB, the schema's version, the pid its name says, and a launcher
// still running (its start time unchanged). stale is set for the file of
// a launcher that is gone.
func readFile(path string, pid int) (st *State, stale bool, err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, false, err
	}
	if len(data) > maxFile {
		return nil, false, fmt.Errorf("live: %s: over %d bytes", path, maxFile)
	}
	st = &State{}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, false, fmt.Errorf("live: %s: %w", path, err)
	}
	if st.Version != Version || st.Pid != pid {
		return nil, false, fmt.Errorf("live: %s: not a version %d state of pid %d", path, Version, pid)
	}
	return st, StartTicks(pid) != st.StartTicks, nil
}

// DeniedError is a job whose state this user may not read: another
// user's, whose files' permissions say no.
type DeniedError struct {
	Pid, UID int
	Err      error
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("live: job %d is user %d's: its state is not readable by this user: %v", e.Pid, e.UID, e.Err)
}

// Unwrap returns Err.
func (e *DeniedError) Unwrap() error { return e.Err }

// ErrNotFound is a pid or run id that no running launcher publishes.
var ErrNotFound = errors.New("live: no running mpspawn job by that pid or run id on this machine")

// Read returns the state of the job that launcher pid runs, whoever's
// it is: a *DeniedError when the files' permissions refuse it, an error
// wrapping ErrNotFound when no launcher by that pid publishes one.
func Read(pid int) (*State, error) {
	fi, err := os.Stat("/proc/" + strconv.Itoa(pid))
	if err != nil {
		return nil, fmt.Errorf("%w: pid %d", ErrNotFound, pid)
	}
	uid := os.Geteuid()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid = int(st.Uid)
	}
	for _, dir := range dirsFor(uid) {
		st, stale, err := readFile(fileName(dir, pid), pid)
		switch {
		case errors.Is(err, fs.ErrPermission):
			return nil, &DeniedError{Pid: pid, UID: uid, Err: err}
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return nil, err
		case stale:
			return nil, fmt.Errorf("%w: pid %d", ErrNotFound, pid)
		}
		return st, nil
	}
	return nil, fmt.Errorf("%w: pid %d", ErrNotFound, pid)
}

// List returns the jobs this user's launchers run on this machine, by
// pid, and removes the files of launchers that are gone.
func List() ([]*State, error) {
	var out []*State
	seen := map[int]bool{}
	for _, dir := range dirsFor(os.Geteuid()) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			pid, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".json"))
			if err != nil || !strings.HasSuffix(e.Name(), ".json") || seen[pid] {
				continue
			}
			st, stale, err := readFile(filepath.Join(dir, e.Name()), pid)
			if stale {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
			if err != nil || stale {
				continue
			}
			seen[pid] = true
			out = append(out, st)
		}
	}
	sortByPid(out)
	return out, nil
}
