//go:build linux

package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/procfs"
	"github.com/mpspawn/mpspawn/internal/proctest"
)

// forkRank is the Python rank of the forkserver tests:
//
//	rank.py exit CODE    exit CODE
//	rank.py block        write "PID PPID" to fd 3, then wait for a signal
//	rank.py wait         wait for a signal
//	rank.py env KEY...   print KEY=value for each key
//	rank.py fd N         exit 0 if fd N is open (else a traceback, exit 1)
const forkRank = `import os, signal, sys
mode = sys.argv[1]
if mode == "exit":
    sys.exit(int(sys.argv[2]))
if mode == "fd":
    os.fstat(int(sys.argv[2]))
if mode == "block":
    os.write(3, b"%d %d\n" % (os.getpid(), os.getppid()))
    os.close(3)
if mode == "leave-group":
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)
        while True:
            signal.pause()
    os.setpgid(child, child)
    os.setpgid(0, child)
    os.write(3, b"%d %d\n" % (os.getpid(), child))
    os.close(3)
if mode == "daemons":
    import subprocess
    subprocess.Popen(["sleep", "600"], start_new_session=True)
    subprocess.Popen(["sleep", "600"], process_group=0)
    if os.fork() == 0:
        os.setsid()
        subprocess.Popen(["sleep", "600"])
        os._exit(0)
    os.wait()
    os.write(3, b"%d\n" % os.getpid())
    os.close(3)
    if len(sys.argv) > 2:
        sys.exit(int(sys.argv[2]))
if mode == "sh":
    import subprocess
    subprocess.run(["sh", "-c", sys.argv[2]])
    sys.exit(1)
if mode == "print":
    for i in range(int(sys.argv[2])):
        print("%d %s" % (i, "x" * int(sys.argv[3])))
    sys.exit(0)
if mode == "family":
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            signal.pause()
    os.write(3, b"%d %d\n" % (os.getpid(), child))
    os.close(3)
if mode in ("block", "wait", "leave-group", "daemons", "family"):
    while True:
        signal.pause()
if mode == "env":
    for k in sys.argv[2:]:
        print("%s=%s" % (k, os.environ.get(k)))
`

// startForkserver starts a server for python3 and returns it with the
// rank script's path; the server is closed when the test ends.
func startForkserver(t *testing.T, preload ...string) (*Forkserver, string, string) {
	t.Helper()
	return startForkserverWith(t, ForkserverConfig{Preload: preload})
}

// startForkserverWith is startForkserver with cfg (its Python is set).
func startForkserverWith(t *testing.T, cfg ForkserverConfig) (*Forkserver, string, string) {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on PATH")
	}
	script := filepath.Join(t.TempDir(), "rank.py")
	if err := os.WriteFile(script, []byte(forkRank), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Python = python
	fs, err := newForkserver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	return fs, python, script
}

func pySpec(rank int, python, script string, args ...string) Spec {
	return Spec{
		Rank: rank, LocalRank: rank, Path: python,
		Args: append([]string{python, "-u", script}, args...),
		Env:  append(os.Environ(), "RANK="+strconv.Itoa(rank)),
	}
}

func TestForkserverFirstFailure(t *testing.T) {
	fs, python, script := startForkserver(t, "json")
	specs := []Spec{
		pySpec(0, python, script, "wait"),
		pySpec(1, python, script, "wait"),
		pySpec(2, python, script, "exit", "3"),
	}
	specs[2].ErrorFile = filepath.Join(t.TempDir(), "error.json")
	g, err := Start(context.Background(), specs, Options{Method: fs, Stop: StopOptions{GracePeriod: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, g)
	if res.ExitCode() != 3 || res.RootCause != 2 {
		t.Fatalf("ExitCode() = %d, RootCause = %d; want 3, rank 2 (ranks %+v)", res.ExitCode(), res.RootCause, res.Ranks)
	}
	for _, r := range res.Ranks[:2] {
		if !r.Stopped || r.Signal != syscall.SIGTERM {
			t.Errorf("rank %d = %s, stopped %v; want SIGTERM from the launcher", r.Rank, r.Status(), r.Stopped)
		}
	}
	if res.Ranks[2].ErrorFilePath != specs[2].ErrorFile {
		t.Errorf("ErrorFilePath = %q; want %q", res.Ranks[2].ErrorFilePath, specs[2].ErrorFile)
	}
}

func TestForkserverEnvAndOutput(t *testing.T) {
	fs, python, script := startForkserver(t)
	out := &lineBuffer{}
	specs := []Spec{pySpec(0, python, script, "env", "RANK", "MPSPAWN_X"), pySpec(1, python, script, "env", "RANK", "MPSPAWN_X")}
	for i := range specs {
		specs[i].Env = append(specs[i].Env, "MPSPAWN_X=x"+strconv.Itoa(i))
		specs[i].Stdout = out
	}
	// Two Groups in turn on one server.
	for range 2 {
		g, err := Start(context.Background(), specs, Options{Method: fs})
		if err != nil {
			t.Fatal(err)
		}
		if res := waitResult(t, g); !res.Succeeded() {
			t.Fatalf("result = %+v; want success", res)
		}
	}
	got := out.String()
	for _, want := range []string{"RANK=0\n", "RANK=1\n", "MPSPAWN_X=x0\n", "MPSPAWN_X=x1\n"} {
		if strings.Count(got, want) != 2 {
			t.Errorf("output %q; want %q twice", got, want)
		}
	}
}

func TestForkserverDies(t *testing.T) {
	fs, python, script := startForkserver(t)
	specs := []Spec{pySpec(0, python, script, "block"), pySpec(1, python, script, "block")}
	ready := withReady(t, specs)
	g, err := Start(context.Background(), specs, Options{Method: fs, Stop: StopOptions{GracePeriod: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	lines := ready()
	if ppid := strings.Fields(lines[0])[1]; ppid != strconv.Itoa(fs.Pid()) {
		t.Fatalf("rank's parent = %s; want the forkserver %d", ppid, fs.Pid())
	}
	if err := syscall.Kill(fs.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, g)
	if !errors.Is(res.Cause, ErrForkserverDied) || res.RootCause != -1 || res.ExitCode() != 1 {
		t.Fatalf("Cause = %v, RootCause %d, ExitCode %d; want ErrForkserverDied, none, 1", res.Cause, res.RootCause, res.ExitCode())
	}
	for _, l := range lines {
		pid, _ := strconv.Atoi(strings.Fields(l)[0])
		if !proctest.WaitExit(pid, time.Second) {
			t.Errorf("rank %d still alive after the forkserver died", pid)
		}
	}
	// Later starts fail at once, naming the cause.
	if _, err := Start(context.Background(), specs[:1], Options{Method: fs}); !errors.Is(err, ErrForkserverDied) {
		t.Errorf("Start after the server died = %v; want ErrForkserverDied", err)
	}
}

func TestForkserverRefusals(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on PATH")
	}
	fs, err := newForkserver(ForkserverConfig{Python: python, Preload: []string{"json", "no_such_module_x"}})
	if err != nil {
		t.Fatal(err)
	}
	err = fs.Ready(context.Background())
	var pe *PreloadError
	if !errors.As(err, &pe) || pe.Module != "no_such_module_x" || !strings.Contains(pe.Err, "ModuleNotFoundError") || !errors.Is(err, ErrPreload) {
		t.Errorf("Ready() = %v; want a PreloadError for no_such_module_x", err)
	}
	fs.Close()

	fs, _, _ = startForkserver(t)
	_, err = Start(context.Background(), []Spec{{Path: "/bin/true", Args: []string{"true"}}}, Options{Method: fs})
	if err == nil || !strings.Contains(err.Error(), "only Python ranks") {
		t.Errorf("Start(/bin/true) = %v; want a refusal of a non-Python rank", err)
	}
}

func TestForkserverBadRequests(t *testing.T) {
	fs, python, script := startForkserver(t)
	if err := fs.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	stdio := slices.Repeat([]*os.File{devnull}, 3)
	tooMany := slices.Repeat([]*os.File{devnull}, forkserverMaxFDs+1)
	argv, _ := json.Marshal([]string{"-u", script, "exit", "0"})
	fork := `"op":"fork","env":[],"argv":` + string(argv)
	tests := []struct {
		name   string
		packet string // %d, if any, is the request's id; none: the server can read no id
		fds    []*os.File
		want   string // in the error reply
	}{
		{"unknown op", `{"id":%d,"op":"exec"}`, stdio, "bad request: unknown op 'exec'"},
		{"no argv", `{"id":%d,"op":"fork","env":[]}`, stdio, "bad request: argv None is not a list of strings"},
		{"env not a list", `{"id":%d,"op":"fork","env":"A=1","argv":[]}`, stdio, "bad request: env 'A=1' is not a list"},
		{"NUL in env", `{"id":%d,"op":"fork","env":["A=\u0000"],"argv":` + string(argv) + `}`, stdio, "bad request: env ['A=\\x00'] is not a list of strings without NUL"},
		{"cpus not numbers", `{"id":%d,` + fork + `,"cpus":["0"]}`, stdio, "bad request: cpus ['0'] is not a list of CPU numbers"},
		{"bad cwd", `{"id":%d,` + fork + `,"cwd":"/nonexistent/mpspawn"}`, stdio, "bad request: cwd '/nonexistent/mpspawn' is not a directory"},
		{"bad cgroup", `{"id":%d,` + fork + `,"cgroup":"/nonexistent/mpspawn"}`, stdio, "bad request: cgroup '/nonexistent/mpspawn' is not a directory"},
		{"cgroup that takes no process", `{"id":%d,` + fork + `,"cgroup":"/proc"}`, stdio, "cannot place the rank in its cgroup /proc"},
		{"no stdio", `{"id":%d,` + fork + `}`, stdio[:1], "bad request: 1 fds"},
		{"too many fds", `{"id":%d,` + fork + `}`, tooMany, "bad request: more than 64 fds"},
		{"not python", `{"id":%d,"op":"fork","env":[],"argv":["-c","pass"]}`, stdio, "bad request: forkserver runs PYTHON"},
		{"not JSON", `{"id":1,`, stdio, "bad request: not JSON"},
		{"empty", ``, nil, "bad request: not JSON"},
		{"not an object", `[1]`, stdio, "bad request: a JSON list, not an object"},
		{"id not an integer", `{"id":"7","op":"fork"}`, stdio, "bad request: id '7' is not an integer"},
		{"id out of range", `{"id":9223372036854775808,"op":"fork"}`, nil, "is not an integer"},
		{"too many fds, no id", `[]`, tooMany, "bad request: more than 64 fds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stray := fs.strays()
			if strings.Contains(tc.packet, "%d") {
				reply, id, err := fs.expect()
				if err != nil {
					t.Fatal(err)
				}
				closed := sendRaw(t, fs, fmt.Sprintf(tc.packet, id), tc.fds)
				r := awaitReply(t, reply)
				if r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
					t.Errorf("reply to %q = pid %d, error %v; want an error with %q", tc.packet, r.pid, r.err, tc.want)
				}
				closed()
			} else {
				closed := sendRaw(t, fs, tc.packet, tc.fds)
				// The server answers in order: once a later request's reply
				// is in, so is the error for this one.
				reply, id, err := fs.expect()
				if err != nil {
					t.Fatal(err)
				}
				sendRaw(t, fs, fmt.Sprintf(`{"id":%d,"op":"sync"}`, id), nil)()
				awaitReply(t, reply)
				fs.mu.Lock()
				n, got := fs.stray, fs.strayErr
				fs.mu.Unlock()
				if n != stray+1 || !strings.Contains(got, tc.want) {
					t.Errorf("%q got %d errors with no id (last %q); want 1 with %q", tc.packet, n-stray, got, tc.want)
				}
				closed()
				return
			}
			if n := fs.strays(); n != stray {
				t.Errorf("%q got %d errors with no id; want none", tc.packet, n-stray)
			}
		})
	}
	// A refused fork leaves no child, not even a zombie: none forked, or
	// the one forked killed and reaped.
	for _, pid := range procfs.Pids() {
		if st, ppid, err := procfs.Stat(pid); err == nil && ppid == fs.Pid() {
			t.Errorf("forkserver's child %d (state %c) after refused requests; want none", pid, st)
		}
	}
	// The server lives on and forks.
	out := &lineBuffer{}
	spec := pySpec(0, python, script, "env", "RANK")
	spec.Stdout = out
	g, err := Start(context.Background(), []Spec{spec}, Options{Method: fs})
	if err != nil {
		t.Fatalf("Start after bad requests = %v; want a forked rank", err)
	}
	if res := waitResult(t, g); !res.Succeeded() || out.String() != "RANK=0\n" {
		t.Fatalf("result = %+v, output %q; want success, RANK=0", res, out.String())
	}
}

func TestForkserverMaxFDs(t *testing.T) {
	fs, python, script := startForkserver(t)
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	last := strconv.Itoa(forkserverMaxFDs - 1)
	spec := pySpec(0, python, script, "fd", last)
	spec.ExtraFiles = slices.Repeat([]*os.File{devnull}, forkserverMaxFDs-3)
	g, err := Start(context.Background(), []Spec{spec}, Options{Method: fs})
	if err != nil {
		t.Fatalf("Start(%d extra files) = %v; want a forked rank", len(spec.ExtraFiles), err)
	}
	if res := waitResult(t, g); !res.Succeeded() {
		t.Fatalf("rank with fds up to %s: result = %+v; want success", last, res)
	}

	fs.mu.Lock()
	sent := fs.nextID
	fs.mu.Unlock()
	spec.ExtraFiles = append(spec.ExtraFiles, devnull)
	_, err = Start(context.Background(), []Spec{spec}, Options{Method: fs})
	want := fmt.Sprintf("the rank has %d extra files; a forked rank can have at most %d", forkserverMaxFDs-2, forkserverMaxFDs-3)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Start(%d extra files) = %v; want an error with %q", len(spec.ExtraFiles), err, want)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.nextID != sent {
		t.Errorf("%d requests sent for a refused rank; want none", fs.nextID-sent)
	}
}

// sendRaw sends packet with fds to fs's server, as start sends a request,
// but with fds[0] replaced by a pipe's write end. The returned func fails
// the test unless the server has closed that end: call it once the server
// has answered.
func sendRaw(t *testing.T, fs *Forkserver, packet string, fds []*os.File) (closed func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if len(fds) > 0 {
		fds = slices.Clone(fds)
		fds[0] = w
	}
	if err := fs.conn.WritePacket([]byte(packet), fds...); err != nil {
		r.Close()
		t.Fatalf("send %q: %v", packet, err)
	}
	return func() {
		t.Helper()
		defer r.Close()
		if len(fds) == 0 {
			return
		}
		r.SetReadDeadline(time.Now().Add(time.Minute)) // a bound on failure: EOF is due at once
		if n, err := r.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
			t.Errorf("after the reply to %q, read from a pipe whose write end was sent = %d, %v; want EOF (the server closed its copy)", packet, n, err)
		}
	}
}

func awaitReply(t *testing.T, reply chan forkReply) forkReply {
	t.Helper()
	select {
	case r := <-reply:
		return r
	case <-time.After(forkReplyTimeout):
		t.Fatalf("no reply after %v", forkReplyTimeout)
		return forkReply{}
	}
}

func (fs *Forkserver) strays() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.stray
}

// lineBuffer collects lines from several relays.
type lineBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lineBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
