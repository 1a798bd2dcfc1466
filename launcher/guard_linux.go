package launcher

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// guardScript is the guard process: it keeps the set of rank process groups
// it is told of ("+PGID" adds one, "-PGID" removes one) and, when its pipe
// reaches EOF — the launcher process exited or died, even by SIGKILL — kills
// every group still in the set. It ignores the signals a terminal or the
// launcher's own process group might receive, and runs in a session of its
// own.
const guardScript = `trap '' INT TERM HUP QUIT USR1 USR2 PIPE
g=' '
while IFS= read -r l; do
	case $l in
	+*) g="$g-${l#+} " ;;
	-*) p=${l#-}
		case $g in *" -$p "*) g="${g%%" -$p "*} ${g#*" -$p "}" ;; esac ;;
	esac
done
[ -n "${g# }" ] && kill -s KILL -- $g 2>/dev/null
exit 0`

// guard is the launcher's side of the guard process. One guard serves every
// Group of a process: it is started with the first and lives as long as the
// process, so later jobs pay nothing for it.
type guard struct {
	mu     sync.Mutex
	w      *os.File
	proc   *os.Process
	groups map[int]bool // registered process groups, resent if the guard is restarted
}

var (
	sharedMu    sync.Mutex
	sharedGuard *guard
)

// startGuard returns the process's guard, starting it the first time. It
// is started without a parent-death signal: it must outlive the launcher.
func startGuard() (*guard, error) {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedGuard == nil {
		g := &guard{groups: map[int]bool{}}
		if err := g.spawn(); err != nil {
			return nil, err
		}
		sharedGuard = g
	}
	return sharedGuard, nil
}

// spawn starts a guard process; g.mu is held or g is not shared yet.
func (g *guard) spawn() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("launcher: guard pipe: %w", err)
	}
	defer r.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return fmt.Errorf("launcher: guard: %w", err)
	}
	defer devnull.Close()
	p, err := os.StartProcess("/bin/sh", []string{"mpspawn-guard", "-c", guardScript}, &os.ProcAttr{
		Files: []*os.File{r, devnull, devnull},
		Env:   []string{"PATH=/usr/bin:/bin"},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		w.Close()
		return fmt.Errorf("launcher: start guard: %w", err)
	}
	if g.w != nil {
		g.w.Close()
		go func(old *os.Process) { _, _ = old.Wait() }(g.proc) // it is gone; reap it
	}
	g.w, g.proc = w, p
	return nil
}

// watch adds a rank's process group to the guard's set.
func (g *guard) watch(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.groups[pgid] = true
	g.send("+" + strconv.Itoa(pgid) + "\n")
}

// unwatch removes a process group whose ranks have all been reaped.
func (g *guard) unwatch(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.groups, pgid)
	g.send("-" + strconv.Itoa(pgid) + "\n")
}

// send writes one line; if the guard has died (someone killed it), a new
// one is started and told of every group still registered.
func (g *guard) send(line string) {
	if _, err := g.w.WriteString(line); err == nil {
		return
	}
	if g.spawn() != nil {
		return
	}
	for pgid := range g.groups {
		_, _ = g.w.WriteString("+" + strconv.Itoa(pgid) + "\n")
	}
}
