package contain

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/mpspawn/mpspawn/launcher/internal/guardrole"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Guard is the launcher's side of the guard process. One guard serves
// every job of a process: it is started with the first and lives as long
// as the process, so later jobs pay nothing for it.
type Guard struct {
	mu      sync.Mutex
	w       *os.File
	proc    *os.Process
	groups  map[int]bool // registered process groups, resent if the guard is restarted
	cgroups string       // the job cgroups' prefix, once one was made
	dirs    []string     // directories to remove when the launcher dies
}

var (
	sharedMu    sync.Mutex
	sharedGuard *Guard
)

// StartGuard returns the process's guard, starting it the first time. It
// is started without a parent-death signal: it must outlive the launcher.
func StartGuard() (*Guard, error) {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedGuard == nil {
		g := &Guard{groups: map[int]bool{}}
		if err := g.spawn(); err != nil {
			return nil, err
		}
		sharedGuard = g
	}
	return sharedGuard, nil
}

// spawn starts a guard process; g.mu is held or g is not shared yet. The
// guard is this very binary, re-executed (/proc/self/exe, not the file on
// disk, which may have been replaced since) in the guard role (see
// guardMain): no shell, no other program needed.
func (g *Guard) spawn() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("contain: guard pipe: %w", err)
	}
	defer r.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return fmt.Errorf("contain: guard: %w", err)
	}
	defer devnull.Close()
	// ps shows a plain "mpspawn-guard"; the launcher's lines come on fd 3.
	p, err := os.StartProcess("/proc/self/exe", []string{guardrole.Name}, &os.ProcAttr{
		Files: []*os.File{devnull, devnull, devnull, r},
		Env:   []string{guardrole.Env + "=1"},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		w.Close()
		return fmt.Errorf("contain: start guard: %w", err)
	}
	if g.w != nil {
		g.w.Close()
	}
	g.w, g.proc = w, p
	go g.watchProcess(p)
	return nil
}

// Pid is the guard process's id (for tests that wait for its end).
func (g *Guard) Pid() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.proc.Pid
}

// PipeFD is the descriptor of the launcher's end of the guard's pipe, which
// stays open as long as the process (for tests that look for leaked
// descriptors).
func (g *Guard) PipeFD() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return int(g.w.Fd())
}

// watchProcess reaps guard process p when it dies and, if it is still the
// guard (a rank killed it, say), starts another at once, told everything
// registered: a guard's death never goes unnoticed until the next job. It
// runs as long as the guard, which is as long as this process.
func (g *Guard) watchProcess(p *os.Process) {
	_, _ = p.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.proc == p {
		g.respawn()
	}
}

// Watch adds a rank's process group to the guard's set: the guard kills
// the group, and the process pgid itself, when the launcher dies.
func (g *Guard) Watch(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.groups[pgid] = true
	g.send("+" + strconv.Itoa(pgid) + "\n")
}

// Unwatch removes a process group whose ranks have all been reaped.
func (g *Guard) Unwatch(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.groups, pgid)
	g.send("-" + strconv.Itoa(pgid) + "\n")
}

// WatchCgroups tells the guard where this process's job cgroups are made:
// it kills and removes those still there when the launcher dies.
func (g *Guard) WatchCgroups() {
	base, err := cgroupBase()
	if err != nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cgroups == "" {
		g.cgroups = Prefix(base)
		g.send("c" + g.cgroups + "\n")
	}
}

// RemoveOnDeath asks the launcher's guard to remove dir (recursively, not
// following a symbolic link) if this process dies before it does: a
// scratch directory, say. Every directory given is removed; one that is
// already gone costs nothing. A directory this process makes should be
// made by MkdirTemp instead: given here after it is made, it is left
// behind by a process killed in between.
func RemoveOnDeath(dir string) error {
	g, err := StartGuard()
	if err != nil {
		return err
	}
	return g.removeOnDeath(dir)
}

func (g *Guard) removeOnDeath(dir string) error {
	if strings.ContainsRune(dir, '\n') {
		return fmt.Errorf("contain: remove on death: a directory name with a newline: %q", dir)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dirs = append(g.dirs, dir)
	g.send("d" + dir + "\n")
	return nil
}

// forget takes dir off the guard's directories to remove.
func (g *Guard) forget(dir string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if i := slices.Index(g.dirs, dir); i >= 0 {
		g.dirs = slices.Delete(g.dirs, i, i+1)
	}
	g.send("x" + dir + "\n")
}

// mkdirTempTries bounds MkdirTemp's tries at a name nobody has taken.
const mkdirTempTries = 100

// MkdirTemp makes a new directory (mode 0700) in dir, os.TempDir() when
// empty, named pattern with a random string in place of its last "*"
// (after it when it has none), as os.MkdirTemp does, and returns its
// path. The guard removes it if this process dies before it removes the
// directory itself, and hears of its name before the directory is made: a
// process killed at any moment, even by SIGKILL, leaves none behind.
func MkdirTemp(dir, pattern string) (string, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	if strings.ContainsRune(pattern, os.PathSeparator) {
		return "", fmt.Errorf("contain: mkdir temp %q: pattern contains a path separator", pattern)
	}
	prefix, suffix := pattern, ""
	if i := strings.LastIndexByte(pattern, '*'); i >= 0 {
		prefix, suffix = pattern[:i], pattern[i+1:]
	}
	g, err := StartGuard()
	if err != nil {
		return "", err
	}
	for range mkdirTempTries {
		name := filepath.Join(dir, prefix+randomName()+suffix)
		if err := g.removeOnDeath(name); err != nil {
			return "", err
		}
		err := os.Mkdir(name, 0o700)
		if err == nil {
			return name, nil
		}
		g.forget(name) // not ours: never the guard's to remove
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("contain: mkdir temp: %w", err)
		}
	}
	return "", fmt.Errorf("contain: mkdir temp %s: %d names taken", filepath.Join(dir, pattern), mkdirTempTries)
}

// randomName is a random 64-bit number in decimal (digits only, as
// os.MkdirTemp's): a name nobody can guess in advance.
func randomName() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return strconv.FormatUint(binary.LittleEndian.Uint64(b[:]), 10)
}

// send writes one line; if the guard has died (someone killed it), a new
// one is started and told everything still registered. g.mu is held.
func (g *Guard) send(line string) {
	if _, err := g.w.WriteString(line); err == nil {
		return
	}
	g.respawn()
}

// respawn starts a new guard in place of a dead one and tells it
// everything still registered. g.mu is held.
func (g *Guard) respawn() {
	if g.spawn() != nil {
		return
	}
	var b strings.Builder
	for pgid := range g.groups {
		fmt.Fprintf(&b, "+%d\n", pgid)
	}
	if g.cgroups != "" {
		fmt.Fprintf(&b, "c%s\n", g.cgroups)
	}
	for _, dir := range g.dirs {
		fmt.Fprintf(&b, "d%s\n", dir)
	}
	_, _ = g.w.WriteString(b.String())
}
