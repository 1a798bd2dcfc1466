//go:build linux

package launcher

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestGuardScript feeds the guard script a set of groups, removes one, and
// closes its pipe: only the groups still registered are killed.
func TestGuardScript(t *testing.T) {
	start := func() *os.Process {
		p, err := os.StartProcess("/bin/sleep", []string{"sleep", "1000"}, &os.ProcAttr{
			Files: []*os.File{nil, nil, nil}, Sys: &syscall.SysProcAttr{Setpgid: true},
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	kept, killed1, killed2 := start(), start(), start()
	defer func() {
		for _, p := range []*os.Process{kept, killed1, killed2} {
			_ = p.Kill()
			_, _ = p.Wait()
		}
	}()
	cmd := exec.Command("/bin/sh", "-c", guardScript)
	cmd.Stdin = strings.NewReader(fmt.Sprintf("+%d\n+%d\n+%d\n-%d\n-999999\n", killed1.Pid, kept.Pid, killed2.Pid, kept.Pid))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("guard script: %v: %s", err, out)
	}
	for _, p := range []*os.Process{killed1, killed2} {
		st, err := p.Wait()
		if err != nil || st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("registered group %d: %v, %v; want killed by SIGKILL", p.Pid, st, err)
		}
	}
	if pidGone(kept.Pid, 0) { // the guard has exited: any kill has happened
		t.Errorf("unregistered group %d was killed", kept.Pid)
	}
}
