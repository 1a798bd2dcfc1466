//go:build linux

package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/procfs"
	"golang.org/x/sys/unix"
)

// TestCtrlZStopsTheRanks: SIGTSTP (Ctrl-Z) stops the ranks with mpspawn,
// and SIGCONT (fg) lets them all go on, as a job started by torchrun does
// from one process group.
func TestCtrlZStopsTheRanks(t *testing.T) {
	for _, method := range []string{"spawn", "forkserver"} {
		t.Run(method, func(t *testing.T) { ctrlZStopsTheRanks(t, method) })
	}
}

// blockPy writes its pid to argv[1], then waits for a signal.
const blockPy = `import os, signal, sys
with open(sys.argv[1], "w") as f:
    f.write("%d\n" % os.getpid())
while True:
    signal.pause()
`

func ctrlZStopsTheRanks(t *testing.T, method string) {
	bin := t.TempDir()
	for _, name := range []string{"mpspawn", "rank"} {
		if err := os.Symlink(os.Args[0], filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	ready := filepath.Join(t.TempDir(), "ready")
	if err := unix.Mkfifo(ready, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--no-python", "--nproc-per-node", "2", "--grace-period", "2s", filepath.Join(bin, "rank"), "block", ready}
	if method == "forkserver" {
		script := filepath.Join(bin, "block.py")
		if err := os.WriteFile(script, []byte(blockPy), 0o644); err != nil {
			t.Fatal(err)
		}
		args = []string{"--start-method", "forkserver", "--nproc-per-node", "2", "--grace-period", "2s", script, ready}
	}
	cmd := exec.Command(filepath.Join(bin, "mpspawn"), args...)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	var ranks []int
	for len(ranks) < 2 { // each rank opens, writes and closes the FIFO
		f, err := os.Open(ready)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			pid, _ := strconv.Atoi(strings.TrimSpace(sc.Text()))
			ranks = append(ranks, pid)
		}
		f.Close()
	}
	if len(ranks) != 2 {
		t.Fatalf("ranks reported %v; want 2 pids", ranks)
	}

	if err := cmd.Process.Signal(syscall.SIGTSTP); err != nil {
		t.Fatal(err)
	}
	// mpspawn stops itself only after it has sent the ranks SIGTSTP.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WSTOPPED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	for _, pid := range ranks {
		if st := awaitState(pid, func(s byte) bool { return s == 'T' }); st != 'T' {
			t.Errorf("rank pid %d in state %c after Ctrl-Z; want T (stopped)", pid, st)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for _, pid := range ranks {
		if st := awaitState(pid, func(s byte) bool { return s != 'T' }); st == 'T' {
			t.Errorf("rank pid %d still stopped after SIGCONT", pid)
		}
	}
}

// awaitState reads pid's state letter from /proc until done accepts it, for
// at most 10 s (a signal's effect on another process has no event to wait
// on), and returns the last one read.
func awaitState(pid int, done func(byte) bool) byte {
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _, err := procfs.Stat(pid)
		if err != nil {
			return '?'
		}
		if done(st) || time.Now().After(deadline) {
			return st
		}
		time.Sleep(time.Millisecond)
	}
}
