//go:build linux

package launcher

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/launcher/internal/contain"
	"go.uber.org/goleak"
)

// The test binary is also the rank program: run as testrank.Name it runs
// rankMain and exits (the os/exec helper pattern).
//
// After the tests it checks that they leaked no goroutine and no file
// descriptor: every pipe, socket and pidfd the launcher opens for a Group
// is closed by the time Wait returns.
func TestMain(m *testing.M) {
	testrank.Run(map[string]func([]string) int{testrank.Name: rankMain})
	// The runtime's poller and the shared guard keep descriptors for the
	// life of the process: open them before taking the baseline.
	if err := primeRuntimeFDs(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	before := proctest.OpenFDs()
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(proctest.IgnoreGuard); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
		if leaked := leakedFDs(before, proctest.OpenFDs()); len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "the tests leaked file descriptors: %s\n", strings.Join(leaked, ", "))
			code = 1
		}
		if base, err := contain.Base(); err == nil {
			if left := cgroupsLeft(base, fmt.Sprintf("mpspawn-%d-", os.Getpid())); len(left) > 0 {
				fmt.Fprintf(os.Stderr, "the tests left job cgroups: %s\n", strings.Join(left, ", "))
				removeLeft(left)
				code = 1
			}
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
	_, err = contain.StartGuard()
	return err
}

// leakedFDs lists the descriptors open in after but not in before,
// except the shared guard's pipe (restarted by the guard tests).
func leakedFDs(before, after map[int]string) []string {
	guardFD := -1
	if g, err := contain.StartGuard(); err == nil {
		guardFD = g.PipeFD()
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

// helperSpec is a spec running the test binary as the helper rank (package
// testrank, or rankMain's own modes) in mode, with $RANK set to rank.
func helperSpec(rank int, mode string, args ...string) Spec {
	return Spec{
		Rank: rank, LocalRank: rank, Path: testrank.Exe,
		Args: append([]string{testrank.Name, mode}, args...),
		Env:  append(os.Environ(), "RANK="+strconv.Itoa(rank)),
	}
}

// rankMain is the helper rank of the launcher's tests: the modes below,
// which need package ipc or the launcher itself (neither of which
// testrank may import: their tests import it), and every mode of
// testrank.Main.
//
//	rank peer-liar         a child of the rank writes a frame on the
//	                       rank's control channel (fd 3); then wait
//	rank write-frame       write a broker request on fd 3
//	rank stdout-daemon     leave a daemon holding stdout, exit 0
//	rank mkdirtemp DIR     make directories in DIR until killed
//	rank launcher READY N  start N ranks in mode family, write all their
//	                       "PID CHILDPID" pairs to READY as one line, then
//	                       supervise them until killed
func rankMain(args []string) int {
	if len(args) == 0 {
		return testrank.Main(args)
	}
	switch args[0] {
	case "peer-liar":
		child := testrank.Command("write-frame")
		child.ExtraFiles = []*os.File{os.NewFile(3, "control")}
		child.Stderr = os.Stderr
		if err := child.Run(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return testrank.BlockForever()
	case "write-frame":
		conn, err := ipc.FileConn(os.NewFile(3, "control"))
		if err == nil {
			err = conn.WriteFrame(ipc.Frame{Type: ipc.FrameRequest, ID: 1, Payload: []byte{1}})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "mkdirtemp": // make scratch directories in args[1] until killed
		return helperMkdirTemp(args[1])
	case "stdout-daemon": // a daemon holds the rank's stdout after it exits
		return helperStdoutDaemon()
	case "launcher-daemons": // a rank that starts daemons and reports on fd 3
		return helperLauncherDaemons()
	case "launcher-early": // N family ranks that report on this process's fd 3
		n, err := strconv.Atoi(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		return helperLauncherEarly(n, args[2:]...)
	case "launcher":
		if len(args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: rank launcher READY N")
			return 2
		}
		n, err := strconv.Atoi(args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		return helperLauncher(args[1], n)
	}
	return testrank.Main(args)
}
