package guardrole

import (
	"bufio"
	"errors"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The guard role. Every binary that links this package (the mpspawn CLI,
// every Go API program, the tests) can be its own guard: when it is
// started as one (argv[0] Name and Env set, see contain's Guard.spawn),
// this package's init runs the guard and exits before main.
const (
	// Name is the guard's argv[0]: ps shows a plain "mpspawn-guard".
	Name = "mpspawn-guard"
	// Env is set to 1 in the guard's environment.
	Env = "MPSPAWN_GUARD"
)

func init() {
	if len(os.Args) > 0 && os.Args[0] == Name && os.Getenv(Env) == "1" {
		os.Exit(guardMain(os.NewFile(3, "guard pipe")))
	}
}

// Bounds on the guard's wait for one job cgroup to empty after its
// cgroup.kill: so many checks, so far apart, killing again at each.
const (
	guardEmptyChecks = 100
	guardEmptyPoll   = 50 * time.Millisecond
)

// guardState is what the launcher told its guard: the process groups of
// its ranks ("+PID" adds one, "-PID" removes one; a rank leads its process
// group, so PID is its group's id too), the prefix of its job cgroups
// ("cPREFIX") and the directories to remove ("dDIR" adds one, "xDIR"
// removes one), one per line.
type guardState struct {
	groups map[int]bool
	prefix string
	dirs   []string
}

// guardMain is the guard process. It reads the launcher's lines from in
// until EOF (the launcher process exited or died, even by SIGKILL), then
// kills every rank still in its set, and its process group, and every job
// cgroup still there, and removes the directories. It ignores the signals
// a terminal or the launcher's own process group might receive; it runs in
// a session of its own (Setsid, see Guard.spawn).
func guardMain(in *os.File) int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE)
	st := readGuardLines(in)
	for pgid := range st.groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		_ = syscall.Kill(pgid, syscall.SIGKILL)
	}
	if st.prefix != "" {
		endCgroups(st.prefix)
	}
	for _, dir := range st.dirs {
		if fi, err := os.Lstat(dir); err == nil && fi.IsDir() { // never a link's target
			_ = os.RemoveAll(dir)
		}
	}
	return 0
}

// readGuardLines reads the launcher's lines until EOF.
func readGuardLines(in *os.File) guardState {
	st := guardState{groups: map[int]bool{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" {
			continue
		}
		switch arg := l[1:]; l[0] {
		case '+', '-':
			pid, err := strconv.Atoi(arg)
			if err != nil || pid < 2 {
				continue // never -0 or -1: the guard's own group, or everyone
			}
			if l[0] == '+' {
				st.groups[pid] = true
			} else {
				delete(st.groups, pid)
			}
		case 'c':
			st.prefix = arg
		case 'd':
			st.dirs = append(st.dirs, arg)
		case 'x':
			if i := slices.Index(st.dirs, arg); i >= 0 {
				st.dirs = slices.Delete(st.dirs, i, i+1)
			}
		}
	}
	// A read error is an end too: the launcher is gone or the pipe broken.
	return st
}

// endCgroups kills every job cgroup named prefix* (cgroup.kill), waits
// for each to empty (bounded, killing again whatever entered it
// meanwhile), removes them deepest first, and goes round again, at most
// Passes times in all, while any is left: a process that entered one
// between the wait and the rmdir makes rmdir fail with EBUSY.
func endCgroups(prefix string) {
	for range Passes {
		jobs := withPrefix(prefix)
		left := false
		for _, j := range jobs {
			if killCgroup(j) {
				left = true
			}
		}
		if !left {
			return
		}
		for _, j := range jobs {
			waitCgroupEmpty(j)
			if fi, err := os.Lstat(j); err == nil && fi.IsDir() {
				_ = RemoveTree(j)
			}
		}
	}
}

// killCgroup writes cgroup.kill of cgroup dir, and reports whether dir is
// a cgroup (it has a cgroup.kill).
func killCgroup(dir string) bool {
	kill := dir + "/cgroup.kill"
	if fi, err := os.Stat(kill); err != nil || !fi.Mode().IsRegular() {
		return false
	}
	_ = os.WriteFile(kill, []byte("1"), 0)
	return true
}

// waitCgroupEmpty waits, bounded, for cgroup dir to report "populated 0",
// killing it again at each check.
func waitCgroupEmpty(dir string) {
	events := dir + "/cgroup.events"
	for range guardEmptyChecks {
		data, err := os.ReadFile(events)
		if err != nil {
			return
		}
		first, _, _ := strings.Cut(string(data), "\n")
		if first == "populated 0" {
			return
		}
		_ = os.WriteFile(dir+"/cgroup.kill", []byte("1"), 0)
		time.Sleep(guardEmptyPoll) // the guard's own bounded poll; nothing else to wait on once alone
	}
}

// Passes bounds the passes over a job's cgroups when they are removed: a
// process that entered one between the wait and the rmdir makes rmdir
// fail with EBUSY, and the next pass kills and waits again.
const Passes = 3

// withPrefix lists the paths that start with prefix (a directory's path,
// then the start of a name), sorted: filepath.Glob(prefix + "*") without
// importing path/filepath (see the package doc).
func withPrefix(prefix string) []string {
	i := strings.LastIndexByte(prefix, '/')
	if i < 0 {
		return nil
	}
	dir, start := prefix[:i], prefix[i+1:]
	if dir == "" {
		dir = "/"
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), start) {
			out = append(out, strings.TrimSuffix(dir, "/")+"/"+e.Name())
		}
	}
	return out
}

// RemoveTree removes directory tree dir, deepest first, with rmdir alone
// (cgroup directories hold no files to remove): the first error, or nil
// when it is gone (or never was).
func RemoveTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var first error
	for _, e := range ents {
		if e.IsDir() {
			if err := RemoveTree(dir + "/" + e.Name()); err != nil && first == nil {
				first = err
			}
		}
	}
	if err := syscall.Rmdir(dir); err != nil && err != syscall.ENOENT && first == nil {
		first = err
	}
	return first
}
