//go:build linux

package launcher

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperLauncher is a launcher process for TestLauncherSIGKILLLeavesNothing:
// it starts one "family" rank per arg and reports every rank's and child's
// pid on its fd 3, then supervises until killed.
func helperLauncher(args []string) int {
	report := os.NewFile(3, "report")
	exe, _ := os.Executable()
	r, w, _ := os.Pipe()
	var specs []Spec
	for i := range len(args) {
		specs = append(specs, Spec{
			Rank: i, Path: exe, Args: []string{"rank"},
			Env:        append(os.Environ(), "MPSPAWN_TEST_HELPER=family"),
			ExtraFiles: []*os.File{w},
		})
	}
	g, err := Start(context.Background(), specs, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	w.Close()
	sc := bufio.NewScanner(r)
	for range specs {
		if !sc.Scan() {
			return 1
		}
		report.WriteString(sc.Text() + "\n")
	}
	report.Close()
	g.Wait()
	return 0
}

func TestLauncherSIGKILLLeavesNothing(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(os.Args[0], "x", "x", "x")
	cmd.Env = append(os.Environ(), "MPSPAWN_TEST_HELPER=launcher")
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	var pids []int
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		for _, f := range strings.Fields(sc.Text()) {
			pid, _ := strconv.Atoi(f)
			pids = append(pids, pid)
		}
	}
	if len(pids) != 6 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("launcher reported pids %v; want 3 ranks and 3 children", pids)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, pid := range pids {
		if !pidGone(pid, time.Second) {
			t.Errorf("pid %d still alive 1s after the launcher was SIGKILLed", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
