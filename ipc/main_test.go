//go:build linux

package ipc

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"

	"github.com/mpspawn/mpspawn/internal/testrank"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// TestMain lets the test binary act as a rank (the os/exec helper
// pattern): run as testrank.Name it runs rankMain and exits.
func TestMain(m *testing.M) {
	testrank.Run(map[string]func([]string) int{testrank.Name: rankMain})
	goleak.VerifyTestMain(m)
}

// rankMain is the helper rank of the ipc tests: the modes below, which
// drive the package's internals, and every mode of testrank.Main.
//
//	rank broker          see brokerRank
//	rank echo            see echo
//	rank violate NAME    see violateRank
//	rank violate-child   see violateChild
//	rank limits LIMIT    see limitRank
//	rank abuse W G       see abuseRank
//	rank hold N          see holdRank
//	rank flood N         see floodRank
func rankMain(args []string) int {
	if len(args) == 0 {
		return testrank.Main(args)
	}
	switch args[0] {
	case "broker":
		return brokerRank()
	case "violate":
		return violateRank(args[1:])
	case "violate-child":
		return violateChild(args[1:])
	case "limits":
		return limitRank(args[1:])
	case "abuse":
		return abuseRank(args[1:])
	case "hold":
		return holdRank(args[1:])
	case "flood":
		return floodRank(args[1:])
	case "echo":
		if err := echo(); err != nil {
			fmt.Fprintln(os.Stderr, "echo helper:", err)
			return 1
		}
		return 0
	}
	return testrank.Main(args)
}

// echo is a rank: on its inherited fd 3 it reads one frame carrying a file,
// answers with its pid, the pid the kernel says wrote the frame, the
// payload and the file's content, passes the file back, and then waits for
// FrameClose.
func echo() error {
	f := os.NewFile(3, "ipc")
	c, err := FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	defer c.Close()
	req, err := c.ReadFrame()
	if err != nil {
		return err
	}
	if len(req.Files) != 1 {
		return fmt.Errorf("got %d files, want 1", len(req.Files))
	}
	content, err := io.ReadAll(io.NewSectionReader(req.Files[0], 0, 1<<20))
	if err != nil {
		return err
	}
	cred, err := c.PeerCred()
	if err != nil {
		return err
	}
	reply := fmt.Sprintf("pid=%d peer=%d %s %s", os.Getpid(), cred.Pid, req.Payload, content)
	err = c.WriteFrame(Frame{Type: FrameReply, ID: req.ID, Payload: []byte(reply), Files: req.Files})
	req.Files[0].Close()
	if err != nil {
		return err
	}
	bye, err := c.ReadFrame()
	if err != nil {
		return err
	}
	if bye.Type != FrameClose {
		return fmt.Errorf("got %v frame, want close", bye.Type)
	}
	return nil
}

// countFDs returns how many descriptors the process has open.
func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// checkFDs fails the test when the process's open descriptor count is no
// longer want.
func checkFDs(t testing.TB, want int) {
	t.Helper()
	if got := countFDs(t); got != want {
		t.Errorf("open descriptors = %d; want %d (leak)", got, want)
	}
}

// pair returns both ends of a Pair as Conns, closed when the test ends.
func pair(t testing.TB) (parent, child *Conn) {
	t.Helper()
	parent, f, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	child, err = FileConn(f)
	f.Close()
	if err != nil {
		parent.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		parent.Close()
		child.Close()
	})
	return parent, child
}

// rawPair returns a Pair's parent Conn and its child end as a raw
// descriptor for forging frames, both closed when the test ends.
func rawPair(t testing.TB) (*Conn, *os.File) {
	t.Helper()
	parent, child, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		parent.Close()
		child.Close()
	})
	return parent, child
}

// startOnChannel starts cmd with the child end of a new control channel
// as its fd 3 (ControlFDVar), its stderr the test's, its stdout piped, and
// returns the launcher's end (closed when the test ends) and the pipe. Set
// cmd's stdin before.
func startOnChannel(t testing.TB, cmd *exec.Cmd) (*Conn, io.ReadCloser) {
	t.Helper()
	parent, child, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { parent.Close() })
	cmd.Env = append(os.Environ(), ControlFDVar())
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		child.Close()
		t.Fatal(err)
	}
	err = cmd.Start()
	child.Close()
	if err != nil {
		t.Fatal(err)
	}
	return parent, out
}

// serveConn attaches a connection in this process to b as rank, served by
// Serve; end closes both ends and waits for Serve.
func serveConn(t testing.TB, b *Broker, rank int) (c *Conn, end func()) {
	t.Helper()
	parent, child, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	c, err = FileConn(child)
	child.Close()
	if err != nil {
		parent.Close()
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = b.Serve(rank, parent, os.Getpid(), nil) // every frame here is this process's
	}()
	return c, func() { c.Close(); parent.Close(); <-served }
}

// memfd returns a memfd holding content, closed when the test ends.
func memfd(t testing.TB, content string) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("ipc-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	return f
}

// readAllAt reads f's whole content without moving its offset, which a
// received descriptor shares with the sender's.
func readAllAt(t testing.TB, f *os.File) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sendRaw writes data with fds attached through the raw socket w, in one
// sendmsg when possible.
func sendRaw(t testing.TB, w *os.File, data []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for len(data) > 0 {
		n, err := unix.SendmsgN(int(w.Fd()), data, oob, nil, unix.MSG_NOSIGNAL)
		if err != nil {
			t.Fatalf("sendmsg: %v", err)
		}
		data, oob = data[n:], nil
	}
}

// repeat returns fd n times.
func repeat(fd, n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fds[i] = fd
	}
	return fds
}
