//go:build linux

package launcher

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
)

// forkRank is the Python rank of the forkserver tests:
//
//	rank.py exit CODE    exit CODE
//	rank.py block        write "PID PPID" to fd 3, then wait for a signal
//	rank.py wait         wait for a signal
//	rank.py env KEY...   print KEY=value for each key
const forkRank = `import os, signal, sys
mode = sys.argv[1]
if mode == "exit":
    sys.exit(int(sys.argv[2]))
if mode == "block":
    os.write(3, b"%d %d\n" % (os.getpid(), os.getppid()))
    os.close(3)
if mode in ("block", "wait"):
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
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on PATH")
	}
	script := filepath.Join(t.TempDir(), "rank.py")
	if err := os.WriteFile(script, []byte(forkRank), 0o644); err != nil {
		t.Fatal(err)
	}
	fs, err := StartForkserver(ForkserverConfig{Python: python, Preload: preload})
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
	g, err := Start(context.Background(), specs, Options{GracePeriod: time.Minute, Method: fs})
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
	g, err := Start(context.Background(), specs, Options{GracePeriod: time.Minute, Method: fs})
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
	fs, err := StartForkserver(ForkserverConfig{Python: python, Preload: []string{"json", "no_such_module_x"}})
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
