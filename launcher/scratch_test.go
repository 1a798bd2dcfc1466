//go:build linux

package launcher

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/launcher/internal/contain"
)

// TestScratchDirsGoWithAKilledLauncher: 100 launchers, each SIGKILLed at
// a different moment (0 to 20 ms, in steps of 200 µs, after it said it is
// ready) while it makes scratch directories with MkdirTemp, one after
// another: once each launcher's guard has ended, none of their
// directories is left. A directory made before the guard heard of it
// would be left by a launcher killed in between. Ten launchers run at a
// time: a guard built with -race spends a second in its exit.
func TestScratchDirsGoWithAKilledLauncher(t *testing.T) {
	if testing.Short() {
		t.Skip("100 launchers")
	}
	dir := t.TempDir()
	const launches, atOnce = 100, 10
	var made atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, launches)
	for w := range atOnce {
		wg.Go(func() {
			for i := w; i < launches; i += atOnce {
				n, err := killMakingDirs(dir, time.Duration(i)*200*time.Microsecond)
				made.Add(int64(n))
				errs[i] = err
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if len(left) > 0 {
		t.Errorf("%d of the scratch directories of %d SIGKILLed launchers left: %s", len(left), launches, strings.Join(left[:min(len(left), 5)], ", "))
	}
	t.Logf("%d launchers made at least %d directories in all", launches, made.Load())
}

// killMakingDirs starts a launcher that makes directories in dir until it
// is killed, SIGKILLs it after it said it is ready and after delay, and
// waits (bounded) for its guard's end. It returns how many directories
// the launcher said it had made.
func killMakingDirs(dir string, delay time.Duration) (int, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	cmd := testrank.Command("mkdirtemp", dir)
	cmd.ExtraFiles = []*os.File{w}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return 0, err
	}
	in := bufio.NewReader(r)
	line, err := in.ReadString('\n') // the guard's pid: it is about to make directories
	guard, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 0, fmt.Errorf("no guard pid from the launcher: %q, %v", line, err)
	}
	time.Sleep(delay) // the moment of the kill, not a synchronisation
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	n := 0
	for {
		if _, err := in.ReadString('\n'); err != nil {
			break // EOF: the launcher and its guard are gone (the guard does not hold the pipe)
		}
		n++
	}
	if !pidGone(guard, 10*time.Second) {
		return n, fmt.Errorf("launcher %d: guard %d alive 10s after its launcher was SIGKILLed", cmd.Process.Pid, guard)
	}
	return n, nil
}

// helperMkdirTemp writes its guard's pid on fd 3, then makes directories
// in dir with MkdirTemp until it is killed, writing a line on fd 3 after
// each.
func helperMkdirTemp(dir string) int {
	g, err := contain.StartGuard()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ready := os.NewFile(3, "ready")
	fmt.Fprintln(ready, g.Pid())
	for {
		if _, err := MkdirTemp(dir, "mpspawn_"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintln(ready, "made")
	}
}
