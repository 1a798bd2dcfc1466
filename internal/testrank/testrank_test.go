//go:build linux

package testrank

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	Run(map[string]func([]string) int{Name: Main})
	goleak.VerifyTestMain(m)
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return 0
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		args []string
		want int
	}{
		{[]string{"exit", "0"}, 0},
		{[]string{"exit", "3"}, 3},
		{nil, 2},                             // no mode
		{[]string{"nope"}, 2},                // unknown mode
		{[]string{"fail", "1", "3"}, 2},      // too few arguments
		{[]string{"exit", "three"}, 2},       // a malformed number panics
		{[]string{"errorfile", "1", "x"}, 1}, // $RANK is 1: write it, exit 1
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.args), func(t *testing.T) {
			cmd := Command(tt.args...)
			cmd.Env = append(os.Environ(), "RANK=1", "TORCHELASTIC_ERROR_FILE="+t.TempDir()+"/error.json")
			if got := exitCode(t, cmd.Run()); got != tt.want {
				t.Errorf("rank %q exited %d; want %d", tt.args, got, tt.want)
			}
		})
	}
}

// start runs the helper rank with args and its readiness pipe on fd 3,
// and returns the line it wrote there; the rank is killed when the test
// ends.
func start(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := Command(args...)
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		t.Fatalf("rank %q wrote no ready line: %v", args, err)
	}
	return cmd, strings.TrimSuffix(line, "\n")
}

// ignores reports whether pid ignores sig, from /proc/PID/status.
func ignores(t *testing.T, pid int, sig syscall.Signal) bool {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return mask&(1<<(sig-1)) != 0
		}
	}
	t.Fatalf("no SigIgn in /proc/%d/status", pid)
	return false
}

func TestReady(t *testing.T) {
	tests := []struct {
		args        []string
		ignoresTERM bool // the rank ignores SIGTERM
	}{
		{[]string{"block", ReadyFD}, false},
		{[]string{"ignore", ReadyFD, strconv.Itoa(int(syscall.SIGTERM))}, true},
		{[]string{"exit-on-signal", ReadyFD}, false},
	}
	for _, tt := range tests {
		t.Run(tt.args[0], func(t *testing.T) {
			cmd, line := start(t, tt.args...)
			if want := strconv.Itoa(cmd.Process.Pid); line != want {
				t.Errorf("rank %q wrote %q; want its pid %s", tt.args, line, want)
			}
			if got := ignores(t, cmd.Process.Pid, syscall.SIGTERM); got != tt.ignoresTERM {
				t.Errorf("rank %q ignores SIGTERM = %v; want %v", tt.args, got, tt.ignoresTERM)
			}
		})
	}
}

func TestExitOnSignal(t *testing.T) {
	cmd, _ := start(t, "exit-on-signal", ReadyFD)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("rank exit-on-signal after SIGTERM: %v; want exit 0", err)
	}
}

func TestFamily(t *testing.T) {
	cmd, line := start(t, "family", ReadyFD)
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != strconv.Itoa(cmd.Process.Pid) {
		t.Fatalf("rank family wrote %q; want %q and its child's pid", line, strconv.Itoa(cmd.Process.Pid))
	}
	child, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = syscall.Kill(child, syscall.SIGKILL)
		if !proctest.WaitExit(child, 5*time.Second) {
			t.Errorf("child %d alive 5s after SIGKILL", child)
		}
	}()
	if !ignores(t, child, syscall.SIGTERM) {
		t.Errorf("the family's child %d does not ignore SIGTERM", child)
	}
}
