package launcher

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// guardScript is the guard process, run as a plain "mpspawn-guard" (sh
// reading this script on stdin) with the launcher's pipe on fd 3: it keeps the set of ranks it is told of
// ("+PID" adds one, "-PID" removes one; a rank leads its process group, so
// PID is its group's id too), the prefix of the
// launcher's job cgroups ("cPREFIX") and the directories to remove ("dDIR", one per line),
// and, when its pipe reaches EOF — the launcher process exited or died,
// even by SIGKILL — kills every rank still in the set, and its process group, and every job cgroup
// still there (cgroup.kill), waits for the cgroups to empty (bounded,
// killing again whatever entered them meanwhile), removes them deepest
// first, and goes round again, at most three times in all, while any is
// left (a process that entered one between the wait and the rmdir makes
// rmdir fail with EBUSY); then it removes the directories. It ignores the signals a
// terminal or the launcher's own process group might receive, and runs in
// a session of its own.
const guardScript = `trap '' INT TERM HUP QUIT USR1 USR2 PIPE
g=' '
c=
d=
nl='
'
while IFS= read -r l; do
	case $l in
	+*) g="$g${l#+} " ;;
	-*) p=${l#-}
		case $g in *" $p "*) g="${g%%" $p "*} ${g#*" $p "}" ;; esac ;;
	c*) c=${l#c} ;;
	d*) d="$d${l#d}$nl" ;;
	esac
done <&3
for p in $g; do
	kill -s KILL -- -$p $p 2>/dev/null
done
n=0
while [ -n "$c" ] && [ $n -lt 3 ]; do
	n=$((n+1))
	left=
	for j in "$c"*; do
		[ -f "$j/cgroup.kill" ] && left=1 && echo 1 > "$j/cgroup.kill"
	done
	[ -n "$left" ] || break
	for j in "$c"*; do
		i=0
		while [ -f "$j/cgroup.events" ] && [ $i -lt 100 ]; do
			read -r e < "$j/cgroup.events"
			[ "$e" = "populated 0" ] && break
			echo 1 > "$j/cgroup.kill"
			sleep 0.05
			i=$((i+1))
		done
		[ -d "$j" ] && find "$j" -depth -type d -exec rmdir {} + 2>/dev/null
	done
done
printf %s "$d" | while IFS= read -r x; do
	[ -n "$x" ] && [ -d "$x" ] && [ ! -L "$x" ] && rm -rf -- "$x"
done
exit 0`

// guard is the launcher's side of the guard process. One guard serves every
// Group of a process: it is started with the first and lives as long as the
// process, so later jobs pay nothing for it.
type guard struct {
	mu      sync.Mutex
	w       *os.File
	proc    *os.Process
	groups  map[int]bool // registered process groups, resent if the guard is restarted
	cgroups string       // the job cgroups' prefix, once one was made
	dirs    []string     // directories to remove when the launcher dies
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
	// The script comes on stdin, so that ps shows a plain "mpspawn-guard";
	// the launcher's lines come on fd 3. A pipe holds the whole script.
	sr, sw, err := os.Pipe()
	if err != nil {
		w.Close()
		return fmt.Errorf("launcher: guard pipe: %w", err)
	}
	defer sr.Close()
	_, err = sw.WriteString(guardScript + "\n")
	sw.Close()
	if err != nil {
		w.Close()
		return fmt.Errorf("launcher: guard: %w", err)
	}
	p, err := os.StartProcess("/bin/sh", []string{"mpspawn-guard"}, &os.ProcAttr{
		Files: []*os.File{sr, devnull, devnull, r},
		Env:   []string{"PATH=/usr/bin:/bin"},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		w.Close()
		return fmt.Errorf("launcher: start guard: %w", err)
	}
	if g.w != nil {
		g.w.Close()
	}
	g.w, g.proc = w, p
	go g.watchProcess(p)
	return nil
}

// watchProcess reaps guard process p when it dies and, if it is still the
// guard (a rank killed it, say), starts another at once, told everything
// registered: a guard's death never goes unnoticed until the next job. It
// runs as long as the guard, which is as long as this process.
func (g *guard) watchProcess(p *os.Process) {
	_, _ = p.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.proc == p {
		g.respawn()
	}
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

// watchCgroups tells the guard where this process's job cgroups are made:
// it kills and removes those still there when the launcher dies.
func (g *guard) watchCgroups() {
	base, err := cgroupBase()
	if err != nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cgroups == "" {
		g.cgroups = cgroupPrefix(base)
		g.send("c" + g.cgroups + "\n")
	}
}

// RemoveOnDeath asks the launcher's guard to remove dir (recursively, not
// following a symbolic link) if this process dies before it does: a
// scratch directory, say. Every directory given is removed; one that is
// already gone costs nothing.
func RemoveOnDeath(dir string) error {
	if strings.ContainsRune(dir, '\n') {
		return fmt.Errorf("launcher: remove on death: a directory name with a newline: %q", dir)
	}
	g, err := startGuard()
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dirs = append(g.dirs, dir)
	g.send("d" + dir + "\n")
	return nil
}

// send writes one line; if the guard has died (someone killed it), a new
// one is started and told everything still registered. g.mu is held.
func (g *guard) send(line string) {
	if _, err := g.w.WriteString(line); err == nil {
		return
	}
	g.respawn()
}

// respawn starts a new guard in place of a dead one and tells it
// everything still registered. g.mu is held.
func (g *guard) respawn() {
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
