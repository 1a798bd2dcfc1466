//go:build linux

package contain

import (
	"errors"
	"fmt"
	"github.com/mpspawn/mpspawn/launcher/internal/guardrole"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
)

// TestGuardLines feeds the guard a set of groups, removes one, and
// closes its pipe: only the groups still registered are killed.
func TestGuardLines(t *testing.T) {
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
	// As the launcher runs it: this binary in the guard role, the lines on
	// fd 3.
	tmp := t.TempDir()
	// Directories to remove: two (one with a space in its name), and a
	// link to a third, which is kept with everything in it; a fourth is
	// given and taken back ("x"), and kept.
	dir1, dir2, target := filepath.Join(tmp, "scratch"), filepath.Join(tmp, "etcd data"), filepath.Join(tmp, "target")
	link, forgotten := filepath.Join(tmp, "link"), filepath.Join(tmp, "forgotten")
	for _, d := range []string{dir1, dir2, target, forgotten} {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	lines := filepath.Join(tmp, "lines")
	if err := os.WriteFile(lines, fmt.Appendf(nil, "+%d\nd%s\n+%d\n+%d\nd%s\n-%d\n-999999\nd%s\nd%s\nx%s\n", killed1.Pid, dir1, kept.Pid, killed2.Pid, dir2, kept.Pid, link, forgotten, forgotten), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(lines)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{guardrole.Name}
	cmd.Env = []string{guardrole.Env + "=1"}
	cmd.ExtraFiles = []*os.File{f}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("guard: %v: %s", err, out)
	}
	for _, p := range []*os.Process{killed1, killed2} {
		if !pidGone(p.Pid, 10*time.Second) {
			t.Errorf("registered group %d alive 10s after the guard's end; want killed", p.Pid)
			continue
		}
		st, err := p.Wait()
		if err != nil || st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("registered group %d: %v, %v; want killed by SIGKILL", p.Pid, st, err)
		}
	}
	if pidGone(kept.Pid, 0) { // the guard has exited: any kill has happened
		t.Errorf("unregistered group %d was killed", kept.Pid)
	}
	for _, d := range []string{dir1, dir2} {
		if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("directory %q after the guard's end: %v; want removed", d, err)
		}
	}
	if _, err := os.Stat(filepath.Join(target, "sub")); err != nil {
		t.Errorf("a link's target after the guard's end: %v; want kept", err)
	}
	if _, err := os.Stat(filepath.Join(forgotten, "sub")); err != nil {
		t.Errorf("a directory taken back after the guard's end: %v; want kept", err)
	}
}

// TestGuardPlainName: ps shows the guard as "mpspawn-guard", without the
// test binary's name or arguments.
func TestGuardPlainName(t *testing.T) {
	g, err := StartGuard()
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	pid := g.proc.Pid
	g.mu.Unlock()
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || string(cmdline) != "mpspawn-guard\x00" {
		t.Errorf("guard's command line = %q, %v; want \"mpspawn-guard\"", cmdline, err)
	}
}

func pidGone(pid int, d time.Duration) bool { return proctest.WaitExit(pid, d) }
