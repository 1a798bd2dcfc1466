//go:build linux

package launcher

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// The test binary is also the rank program: with MPSPAWN_TEST_HELPER set it
// runs one of the helper modes below and exits (the os/exec helper pattern).
func TestMain(m *testing.M) {
	if mode := os.Getenv("MPSPAWN_TEST_HELPER"); mode != "" {
		os.Exit(helper(mode, os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
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
