package diag

import (
	"context"
	_ "embed" // the stack hook's source
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/internal/pidfd"
	"github.com/mpspawn/mpspawn/internal/procfs"
	"golang.org/x/sys/unix"
)

// HookSource is the stack hook (stacks_hook.py) that a Python rank runs
// to write its stacks on StackSignal; the forkserver runs it in each rank.
//
//go:embed stacks_hook.py
var HookSource string

//go:embed stacks_site.py
var stackSiteSource string

// Bounds on taking one Python rank's stack: the wait for its dump to
// start, and for it to stop growing.
const (
	stackWait   = 3 * time.Second
	stackSettle = 50 * time.Millisecond
	stackPoll   = 10 * time.Millisecond
)

// Dir is where a Group's Python ranks write their stacks: its site
// directory holds the sitecustomize module that runs the hook in spawned
// ranks.
type Dir struct {
	dir     string
	created bool // made by the Group, and removed with it
}

// NewDir makes dir (a temporary directory when empty) and the hook's
// sitecustomize module in it.
func NewDir(dir string) (*Dir, error) {
	s := &Dir{dir: dir}
	var err error
	if dir == "" {
		if s.dir, err = os.MkdirTemp("", "mpspawn-stacks-"); err != nil {
			return nil, fmt.Errorf("diag: stacks: %w", err)
		}
		s.created = true
	}
	site := filepath.Join(s.dir, "site")
	if err := os.MkdirAll(site, 0o755); err != nil {
		s.Remove()
		return nil, fmt.Errorf("diag: stacks: %w", err)
	}
	src := HookSource + "\n\n" + stackSiteSource
	if err := os.WriteFile(filepath.Join(site, "sitecustomize.py"), []byte(src), 0o644); err != nil {
		s.Remove()
		return nil, fmt.Errorf("diag: stacks: %w", err)
	}
	return s, nil
}

// Env adds the hook to a rank's environment env (see stacks_hook.py).
func (s *Dir) Env(env []string) []string {
	site := filepath.Join(s.dir, "site")
	add := []string{"MPSPAWN_STACKS_DIR=" + s.dir, "MPSPAWN_STACKS_SIGNAL=" + strconv.Itoa(int(StackSignal)), "PYTHONPATH=" + site}
	if orig, ok := lastEnv(env, "PYTHONPATH"); ok {
		add[2] += string(os.PathListSeparator) + orig
		add = append(add, "MPSPAWN_STACKS_PYTHONPATH="+orig)
	}
	return append(slices.Clip(env), add...)
}

func lastEnv(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], key+"="); ok {
			return v, true
		}
	}
	return "", false
}

// Path is the directory the stack files go to.
func (s *Dir) Path() string { return s.dir }

// Remove removes the stacks' files, and the directory if the Group made
// it.
func (s *Dir) Remove() {
	if s == nil {
		return
	}
	if s.created {
		_ = os.RemoveAll(s.dir)
		return
	}
	_ = os.RemoveAll(filepath.Join(s.dir, "site"))
	files, _ := filepath.Glob(filepath.Join(s.dir, "*.stacks"))
	for _, f := range files {
		_ = os.Remove(f)
	}
	_ = os.Remove(s.dir)
}

// Take takes the stack of the live process pid, whose stack file (if
// its hook ran) is in dir. signal sends a signal to the process itself.
// A Python rank with the hook is asked for its stack and goes on running.
// A Go rank's goroutines are dumped only when stop is set: SIGQUIT, with
// core dumps turned off for it first, ends it (its dump goes to stderr,
// and capture, when not nil, is started to keep it).
func Take(pid int, dir string, signal func(syscall.Signal) error, stop bool, capture *Capture) *Stack {
	path := filepath.Join(dir, strconv.Itoa(pid)+".stacks")
	if dir != "" {
		if _, err := os.Stat(path); err == nil {
			return pythonStack(path, signal)
		}
	}
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if isGoExecutable("/proc/" + strconv.Itoa(pid) + "/exe") {
		if !stop {
			return &Stack{Note: "a Go program: its goroutines are dumped only when the job is stopped (SIGQUIT ends a Go program)"}
		}
		if capture == nil {
			return &Stack{Note: "a Go program whose stderr the launcher does not read: no goroutine dump"}
		}
		// No core file, whatever GOTRACEBACK says.
		_ = unix.Prlimit(pid, unix.RLIMIT_CORE, &unix.Rlimit{}, nil)
		capture.Start()
		if err := signal(syscall.SIGQUIT); err != nil {
			return &Stack{Note: fmt.Sprintf("a Go program: SIGQUIT not sent: %v", err)}
		}
		// The runtime writes the dump, then exits: stopping it before
		// then would cut the dump short.
		if !pidfd.WaitPid(pid, stackWait) {
			return &Stack{Kind: StackGo, Note: fmt.Sprintf("a Go program still running %v after SIGQUIT (state %s): its dump may be cut short", stackWait, procfs.StateName(pid))}
		}
		return &Stack{Kind: StackGo, Note: "goroutines dumped by the Go runtime on SIGQUIT"}
	}
	if st := descendantStacks(pid, dir, exe); st != nil {
		return st
	}
	if strings.HasPrefix(filepath.Base(exe), "python") {
		return &Stack{Note: "a Python program without mpspawn's stack hook (run with -I, -E or -S, or a script's child): no stack available"}
	}
	name := exe
	if name == "" {
		name = "pid " + strconv.Itoa(pid)
	}
	return &Stack{Note: fmt.Sprintf("no stack available: %s is neither a Python nor a Go program", name)}
}

// descendantStacks takes the stacks of the Python processes under a rank
// that is not Python itself (a shell script that runs python): they got
// the hook from the rank's PYTHONPATH. It returns nil when there are none.
func descendantStacks(pid int, dir, exe string) *Stack {
	if dir == "" {
		return nil
	}
	var b strings.Builder
	level := []int{pid}
	for depth := 0; depth < 4 && len(level) > 0; depth++ {
		var next []int
		for _, parent := range level {
			for _, child := range procfs.Children(parent) {
				next = append(next, child)
				// The pidfd first: the process checked is the one signalled.
				fd, err := unix.PidfdOpen(child, 0)
				if err != nil {
					continue
				}
				file := ownStackFile(child)
				if file == "" || filepath.Dir(file) != dir {
					unix.Close(fd)
					continue
				}
				st := pythonStack(file, pidfdSignal(fd))
				unix.Close(fd)
				fmt.Fprintf(&b, "process %d (a Python process the rank started):\n", child)
				if st.Text != "" {
					b.WriteString(st.Text + "\n")
				} else {
					b.WriteString(st.Note + "\n")
				}
			}
		}
		level = next
	}
	if b.Len() == 0 {
		return nil
	}
	return &Stack{Kind: StackPython, Text: strings.TrimRight(b.String(), "\n"),
		Note: fmt.Sprintf("the rank is %s; these are the Python processes it started", exe)}
}

// pidfdSignal signals the process behind pidfd fd; one that is gone is
// not an error.
func pidfdSignal(fd int) func(syscall.Signal) error {
	return func(sig syscall.Signal) error {
		if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
		return nil
	}
}

// pythonStack signals a Python rank whose hook registered faulthandler
// and reads what it appends to its stack file: it waits (bounded) for the
// file to grow, then for it to stop growing.
func pythonStack(path string, signal func(syscall.Signal) error) *Stack {
	before := fileSize(path)
	if err := signal(StackSignal); err != nil {
		return &Stack{Note: fmt.Sprintf("a Python rank: %s not sent: %v", stackSignalName, err)}
	}
	deadline := time.Now().Add(stackWait)
	size, settled := before, time.Time{}
	for time.Now().Before(deadline) {
		time.Sleep(stackPoll) // faulthandler writes from a signal handler: nothing to wait on but the file
		switch n := fileSize(path); {
		case n != size:
			size, settled = n, time.Now()
		case n > before && time.Since(settled) >= stackSettle:
			return &Stack{Kind: StackPython, Text: trimServerFrames(readFrom(path, before, size))}
		}
	}
	if size > before {
		return &Stack{Kind: StackPython, Text: trimServerFrames(readFrom(path, before, size)), Note: "the dump was still growing after " + stackWait.String()}
	}
	return &Stack{Note: fmt.Sprintf("a Python rank that wrote no stack within %v of %s (state %s)", stackWait, stackSignalName, procfs.StateName(pidOfStackFile(path)))}
}

// trimServerFrames drops the outermost frames of each thread that are
// the forkserver's own (its source runs as "<string>"), below the rank's
// script, as a spawned rank's stack would read.
func trimServerFrames(text string) string {
	const server = `  File "<string>", line `
	lines := strings.Split(text, "\n")
	out := make([]string, 0, len(lines))
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], server) {
			out = append(out, lines[i])
			continue
		}
		j := i
		for j < len(lines) && strings.HasPrefix(lines[j], server) {
			j++
		}
		if j < len(lines) && strings.HasPrefix(lines[j], "  File ") { // not the outermost frames
			out = append(out, lines[i:j]...)
		}
		i = j - 1
	}
	return strings.Join(out, "\n")
}

func pidOfStackFile(path string) int {
	pid, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(path), ".stacks"))
	return pid
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func readFrom(path string, from, to int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	n := min(to-from, maxStack)
	buf := make([]byte, n)
	m, _ := f.ReadAt(buf, from)
	return strings.TrimRight(string(buf[:m]), "\n")
}

// DumpStacks takes the stacks of the ranks of the mpspawn launcher whose
// process id is launcher, without stopping them: Python ranks that run
// the stack hook write the stack of every thread; for other ranks the
// Stack says why there is none (a Go rank's dump would end it). The ranks
// are the launcher's descendants that hold their own stack file open
// (Python ranks, spawned or forked), and the topmost ones whose
// environment names the launcher (MPSPAWN_LAUNCHER_PID); they are
// returned ordered by rank.
func DumpStacks(ctx context.Context, launcher int) ([]RankStack, error) {
	if st, _, err := procfs.Stat(launcher); err != nil || st == 'Z' {
		return nil, fmt.Errorf("diag: stacks: no process %d", launcher)
	}
	ranks := launcherRanks(launcher)
	if len(ranks) == 0 {
		return nil, &NoRanksError{Launcher: launcher}
	}
	out := make([]RankStack, 0, len(ranks))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, r := range ranks {
			out = append(out, RankStack{Rank: r.rank, Pid: r.pid, Stack: stackOfPid(r.pid, r.file)})
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
		<-done // each stack is bounded by stackWait
		return nil, fmt.Errorf("diag: stacks: %w", context.Cause(ctx))
	}
	slices.SortFunc(out, func(a, b RankStack) int { return a.Rank - b.Rank })
	return out, nil
}

// stackOfPid takes the stack of a rank of another launcher, signalled
// through a pidfd; file is its stack file, or "".
func stackOfPid(pid int, file string) *Stack {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return &Stack{Note: fmt.Sprintf("rank gone: %v", err)}
	}
	defer unix.Close(fd)
	dir := ""
	if file != "" {
		dir = filepath.Dir(file)
	} else {
		dir, _ = procfs.Getenv(pid, "MPSPAWN_STACKS_DIR") // a spawned rank's, for the Python processes it started
	}
	return Take(pid, dir, pidfdSignal(fd), false, nil)
}

// foundRank is a rank of another launcher: its pid, its rank (-1 when
// unknown) and its stack file ("" when it has none).
type foundRank struct {
	pid, rank int
	file      string
}

// launcherRanks finds the ranks of launcher pid among its descendants.
func launcherRanks(pid int) []foundRank {
	tag := "MPSPAWN_LAUNCHER_PID=" + strconv.Itoa(pid)
	var out []foundRank
	seen := map[int]bool{}
	level := []int{pid}
	for depth := 0; depth < 4 && len(level) > 0; depth++ {
		var next []int
		for _, parent := range level {
			for _, p := range procfs.Children(parent) {
				if seen[p] {
					continue
				}
				seen[p] = true
				// A rank's own processes are its business (its stack
				// covers the Python ones): the walk stops at each rank.
				if file := ownStackFile(p); file != "" {
					out = append(out, foundRank{pid: p, rank: stackFileRank(file), file: file})
				} else if procfs.HasEnv(p, tag) && !procfs.HasEnv(parent, tag) {
					r := -1
					if v, ok := procfs.Getenv(p, "RANK"); ok {
						r, _ = strconv.Atoi(v)
					}
					out = append(out, foundRank{pid: p, rank: r})
				} else {
					next = append(next, p)
				}
			}
		}
		level = next
	}
	return out
}

// ownStackFile is the stack file process pid holds open for itself
// (DIR/<pid>.stacks), or "".
func ownStackFile(pid int) string {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, _ := os.ReadDir(dir)
	suffix := "/" + strconv.Itoa(pid) + ".stacks"
	for _, e := range ents {
		if target, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasSuffix(target, suffix) {
			return target
		}
	}
	return ""
}

// stackFileRank reads the rank from a stack file's first line, "# rank N".
func stackFileRank(file string) int {
	f, err := os.Open(file)
	if err != nil {
		return -1
	}
	defer f.Close()
	buf := make([]byte, 64)
	n, _ := f.Read(buf)
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	r, err := strconv.Atoi(strings.TrimPrefix(line, "# rank "))
	if err != nil {
		return -1
	}
	return r
}
