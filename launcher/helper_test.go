//go:build linux

package launcher

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/mpspawn/mpspawn/ipc"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// The test binary is also the rank program: with MPSPAWN_TEST_HELPER set it
// runs one of the helper modes below and exits (the os/exec helper pattern).
//
// After the tests it checks that they leaked no goroutine and no file
// descriptor: every pipe, socket and pidfd the launcher opens for a Group
// is closed by the time Wait returns.
func TestMain(m *testing.M) {
	if mode := os.Getenv("MPSPAWN_TEST_HELPER"); mode != "" {
		os.Exit(helper(mode, os.Args[1:]))
	}
	// The runtime's poller and the shared guard keep descriptors for the
	// life of the process: open them before taking the baseline.
	if err := primeRuntimeFDs(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	before := proctest.OpenFDs()
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
		if leaked := leakedFDs(before, proctest.OpenFDs()); len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "the tests leaked file descriptors: %s\n", strings.Join(leaked, ", "))
			code = 1
		}
	}
	os.Exit(code)
}

// primeRuntimeFDs makes the runtime open the descriptors it keeps for
// good (its poller) and starts the shared guard.
func primeRuntimeFDs() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	_ = r.SetReadDeadline(time.Now()) // registers r with the poller
	r.Close()
	w.Close()
	_, err = startGuard()
	return err
}

// leakedFDs lists the descriptors open in after but not in before,
// except the shared guard's pipe (restarted by the guard tests).
func leakedFDs(before, after map[int]string) []string {
	guardFD := -1
	if sharedGuard != nil {
		guardFD = int(sharedGuard.w.Fd())
	}
	var leaked []string
	for fd, target := range after {
		if before[fd] != target && fd != guardFD {
			leaked = append(leaked, fmt.Sprintf("%d -> %s", fd, target))
		}
	}
	sort.Strings(leaked)
	return leaked
}

// helperSpec is a spec running the test binary in a helper mode.
func helperSpec(t testing.TB, rank int, mode string, args ...string) Spec {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Spec{
		Rank: rank, LocalRank: rank, Path: exe,
		Args: append([]string{"helper"}, args...),
		Env:  append(os.Environ(), "MPSPAWN_TEST_HELPER="+mode, "HELPER_RANK="+strconv.Itoa(rank)),
	}
}

// ready tells the test, through fd 3 when the test gave one, that the
// helper has installed its signal handlers.
func ready(extra string) {
	f := os.NewFile(3, "ready")
	if f == nil {
		return
	}
	if _, err := f.Write([]byte(extra + "\n")); err == nil {
		f.Close()
	}
}

func helper(mode string, args []string) int {
	switch mode {
	case "exit": // exit with args[0]
		code, _ := strconv.Atoi(args[0])
		return code
	case "block": // wait for any deadly signal, with default dispositions
		ready("")
		return blockForever()
	case "ignore": // ignore args (signal numbers), then block
		for _, a := range args {
			n, _ := strconv.Atoi(a)
			signal.Ignore(syscall.Signal(n))
		}
		ready("")
		return blockForever()
	case "exit-on-signal": // exit 0 on SIGTERM
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		ready("")
		<-c
		return 0
	case "family": // start a child that ignores SIGTERM, report both pids
		exe, _ := os.Executable()
		cmd := exec.Command(exe, strconv.Itoa(int(syscall.SIGTERM)))
		cmd.Env = append(os.Environ(), "MPSPAWN_TEST_HELPER=ignore")
		r, w, _ := os.Pipe()
		cmd.ExtraFiles = []*os.File{w}
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		w.Close()
		buf := make([]byte, 1)
		_, _ = r.Read(buf) // the child is ready
		ready(fmt.Sprintf("%d %d", os.Getpid(), cmd.Process.Pid))
		if len(args) > 0 {
			code, _ := strconv.Atoi(args[0])
			return code
		}
		return blockForever()
	case "print": // print args[0] lines of args[1] bytes, tagged with the rank
		n, _ := strconv.Atoi(args[0])
		size, _ := strconv.Atoi(args[1])
		tag := os.Getenv("HELPER_RANK")
		body := strings.Repeat(tag, size)
		for i := range n {
			fmt.Printf("%s %d %s\n", tag, i, body)
		}
		fmt.Fprintf(os.Stderr, "done %s", tag) // no trailing newline
		return 0
	case "affinity":
		data, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "Cpus_allowed_list:") {
				fmt.Println(strings.TrimSpace(strings.TrimPrefix(l, "Cpus_allowed_list:")))
			}
		}
		return 0
	case "env":
		for _, k := range args {
			fmt.Printf("%s=%s\n", k, os.Getenv(k))
		}
		return 0
	case "errorfile": // write a torch-style error file, then exit 1
		msg := `{"message": {"message": "RuntimeError: boom", "extraInfo": {"py_callstack": "Traceback (most recent call last):\n  File \"x.py\", line 3\nRuntimeError: boom\n", "timestamp": "1700000000"}}}`
		_ = os.WriteFile(os.Getenv("TORCHELASTIC_ERROR_FILE"), []byte(msg), 0o644)
		return 1
	case "peer-liar": // a child of the rank writes on the rank's control channel (fd 3)
		exe, _ := os.Executable()
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), "MPSPAWN_TEST_HELPER=write-frame")
		cmd.ExtraFiles = []*os.File{os.NewFile(3, "control")}
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return blockForever()
	case "write-frame": // write a broker request on fd 3
		conn, err := ipc.FileConn(os.NewFile(3, "control"))
		if err == nil {
			err = conn.WriteFrame(ipc.Frame{Type: ipc.FrameRequest, ID: 1, Payload: []byte{1}})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "launcher": // a launcher process for the no-orphans test: args are ranks' modes
		return helperLauncher(args)
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 2
}

// blockForever parks the helper until a signal ends it. (A bare select{}
// would be reported as a deadlock by the runtime.) pause(2) returns after
// every signal the runtime catches, hence the loop.
func blockForever() int {
	for {
		_ = unix.Pause()
	}
}
