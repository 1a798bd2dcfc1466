//go:build linux

package launcher

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
)

// helperLauncher is a launcher process for TestLauncherSIGKILLLeavesNothing:
// it starts n "family" ranks and reports every rank's and child's pid on
// ready, in one line, then supervises until killed.
func helperLauncher(ready string, n int) int {
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var specs []Spec
	for i := range n {
		s := helperSpec(i, "family", testrank.ReadyFD)
		s.ExtraFiles = []*os.File{w}
		specs = append(specs, s)
	}
	g, err := Start(context.Background(), specs, Options{})
	w.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var pids []string
	sc := bufio.NewScanner(r)
	for range specs {
		if !sc.Scan() {
			return 1
		}
		pids = append(pids, sc.Text())
	}
	testrank.WriteReady(ready, strings.Join(pids, " "))
	g.Wait()
	return 0
}

func TestLauncherSIGKILLLeavesNothing(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := testrank.Command("launcher", testrank.ReadyFD, "3")
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n') // short if the launcher died
	var pids []int
	for _, f := range strings.Fields(line) {
		pid, _ := strconv.Atoi(f)
		pids = append(pids, pid)
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
