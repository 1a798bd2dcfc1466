package rendezvous

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	portsEnv        = "RENDEZVOUS_TEST_PORTS" // comma-separated ports for a helper
	exitUnsupported = 3                       // helper: the kernel lacks IP_LOCAL_PORT_RANGE
)

// helperMain runs the test binary as a helper process:
//
//	listen      bind each port with SO_REUSEADDR on 0.0.0.0, [::] and
//	            127.0.0.1 in turn, listen, and accept a connection
//	probe-held  bind port 0 limited to each port; every bind must fail
//	probe-free  bind port 0 limited to each port; every bind must get it
//	reserve     reserve a port, print it, hold it until stdin closes
func helperMain(mode string) int {
	var ports []int
	for f := range strings.SplitSeq(os.Getenv(portsEnv), ",") {
		if p, err := strconv.Atoi(f); err == nil {
			ports = append(ports, p)
		}
	}
	var err error
	switch mode {
	case "listen":
		err = listenAll(ports)
	case "probe-held", "probe-free":
		err = probeAll(ports, mode == "probe-held")
	case "reserve":
		err = reserveUntilEOF()
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if errors.Is(err, unix.ENOPROTOOPT) {
		return exitUnsupported
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// listenAll does what rank 0 (torch's TCPStore) does on each port, with
// each of the addresses it may use.
func listenAll(ports []int) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) (err error) {
		cerr := c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		return errors.Join(cerr, err)
	}}
	for _, p := range ports {
		for _, addr := range []string{"0.0.0.0", "[::]", "127.0.0.1"} {
			if addr == "[::]" && !hasIPv6() {
				continue
			}
			// "tcp" with [::] is dual-stack, like TCPStore's default.
			l, err := lc.Listen(context.Background(), "tcp", fmt.Sprintf("%s:%d", addr, p))
			if err != nil {
				return fmt.Errorf("listen with SO_REUSEADDR on %s:%d: %w", addr, p, err)
			}
			err = acceptOne(l)
			l.Close()
			if err != nil {
				return fmt.Errorf("accept on %s:%d: %w", addr, p, err)
			}
		}
	}
	return nil
}

// acceptOne dials l over IPv4 loopback and accepts the connection. The
// client closes first, so no socket on l's port is left in TIME_WAIT.
func acceptOne(l net.Listener) error {
	c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", l.Addr().(*net.TCPAddr).Port))
	if err != nil {
		return err
	}
	a, err := l.Accept()
	c.Close()
	if err != nil {
		return err
	}
	return a.Close()
}

// probeAll binds port 0 with the kernel's choice limited to port p (Linux
// 6.3's IP_LOCAL_PORT_RANGE), on every address, with and without
// SO_REUSEADDR. held says whether every bind must fail with EADDRINUSE or
// every bind must get p.
func probeAll(ports []int, held bool) error {
	addrs := []string{"0.0.0.0", "127.0.0.1", "127.0.0.2"}
	if hasIPv6() {
		addrs = append(addrs, "::", "::1")
	}
	for _, p := range ports {
		for _, addr := range addrs {
			for _, reuse := range []bool{false, true} {
				got, err := bindZeroWithin(netip.MustParseAddr(addr), p, reuse)
				switch {
				case errors.Is(err, unix.ENOPROTOOPT):
					return err
				case held && !errors.Is(err, unix.EADDRINUSE):
					return fmt.Errorf("bind(%s port 0 in %d..%d, SO_REUSEADDR %v) = %d, %v; want EADDRINUSE", addr, p, p, reuse, got, err)
				case !held && (err != nil || got != p):
					return fmt.Errorf("bind(%s port 0 in %d..%d, SO_REUSEADDR %v) = %d, %v; want %d", addr, p, p, reuse, got, err, p)
				}
			}
		}
	}
	return nil
}

func bindZeroWithin(addr netip.Addr, p int, reuse bool) (int, error) {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Addr: addr.As16()})
	if addr.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: addr.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return 0, err
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, p<<16|p); err != nil {
		return 0, err
	}
	if err := unix.Bind(fd, sa); err != nil {
		return 0, err
	}
	return portOf(fd)
}

func portOf(fd int) (int, error) {
	sa, err := unix.Getsockname(fd)
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return a.Port, nil
	case *unix.SockaddrInet6:
		return a.Port, nil
	}
	return 0, fmt.Errorf("getsockname = %v, %v", sa, err)
}

func hasIPv6() bool {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

func reserveUntilEOF() error {
	j, err := Static(standalone)
	if err != nil {
		return err
	}
	defer j.Close()
	fmt.Println(j.MasterPort)
	_, err = io.Copy(io.Discard, os.Stdin)
	return err
}

// helper returns a command that runs the test binary as a helper.
func helper(t *testing.T, mode string, ports ...int) *exec.Cmd {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	// Not CommandContext(t.Context()): that context ends before cleanups,
	// which must still close a reserver's stdin and wait for it. Every
	// helper exits on its own, and go test's -timeout bounds them all.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, portsEnv+"="+strings.Join(s, ","),
		"GORACE=atexit_sleep_ms=0") // under -race, do not idle 1s at exit

	return cmd
}

// runHelper runs a helper to completion and fails t if it fails.
func runHelper(t *testing.T, mode string, ports ...int) {
	t.Helper()
	out, err := helper(t, mode, ports...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == exitUnsupported {
		t.Skip("kernel lacks IP_LOCAL_PORT_RANGE (Linux 6.3+), cannot probe port-0 binds")
	}
	if err != nil {
		t.Fatalf("helper %s %v: %v\n%s", mode, ports, err, out)
	}
}

func reserve(t *testing.T) *Job {
	t.Helper()
	j, err := Static(standalone)
	if err != nil {
		t.Fatalf("Static(%+v) = %v; want nil error", standalone, err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func TestReservationIsCloseOnExec(t *testing.T) {
	j := reserve(t)
	flags, err := unix.FcntlInt(j.hold.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("fcntl(F_GETFD) = %#x, %v; want FD_CLOEXEC set", flags, err)
	}
}

func TestReservationAllowsReuseAddrListen(t *testing.T) {
	runHelper(t, "listen", reserve(t).MasterPort)
}

// TestReservationAllowsPythonListen does what torch's TCPStore does, from
// CPython's socket module.
func TestReservationAllowsPythonListen(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not on PATH")
	}
	const script = `
import socket, sys
p = int(sys.argv[1])
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"), (socket.AF_INET, "127.0.0.1")):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((addr, p))
    s.listen()
    c = socket.create_connection(("127.0.0.1", p))
    a, _ = s.accept()
    c.close(); a.close(); s.close()
`
	p := reserve(t).MasterPort
	out, err := exec.CommandContext(t.Context(), python, "-c", script, strconv.Itoa(p)).CombinedOutput()
	if err != nil {
		t.Fatalf("python3 listen with SO_REUSEADDR on port %d: %v\n%s", p, err, out)
	}
}

func TestReservationBlocksPortZero(t *testing.T) {
	j := reserve(t)
	runHelper(t, "probe-held", j.MasterPort)
	if err := j.Close(); err != nil {
		t.Fatalf("Close() = %v; want nil", err)
	}
	runHelper(t, "probe-free", j.MasterPort)
}

// TestConcurrentReservations makes 10 reservations in goroutines and 10 in
// helper processes, all at once: all 20 ports must differ, and rank 0 must
// be able to listen on each while it is held.
func TestConcurrentReservations(t *testing.T) {
	const n = 10
	var procs []*bufio.Reader
	for range n {
		procs = append(procs, startReserver(t))
	}
	jobs, errs := make([]*Job, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { jobs[i], errs[i] = Static(standalone) })
	}
	wg.Wait()
	var ports []int
	for i, j := range jobs {
		if errs[i] != nil {
			t.Fatalf("Static(%+v) = %v; want nil error", standalone, errs[i])
		}
		defer j.Close()
		ports = append(ports, j.MasterPort)
	}
	for _, r := range procs {
		line, err := r.ReadString('\n')
		p, perr := strconv.Atoi(strings.TrimSpace(line))
		if err != nil || perr != nil {
			t.Fatalf("reserver printed %q, %v; want a port", line, err)
		}
		ports = append(ports, p)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Errorf("port %d reserved twice; all ports: %v", p, ports)
		}
		seen[p] = true
	}
	runHelper(t, "listen", ports...)
}

// startReserver starts a helper that reserves a port and holds it until the
// test ends; the port can be read from the returned reader.
func startReserver(t *testing.T) *bufio.Reader {
	t.Helper()
	cmd := helper(t, "reserve")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start reserver: %v", err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("reserver: %v\n%s", err, stderr.Bytes())
		}
	})
	return bufio.NewReader(stdout)
}

func TestNoFDLeak(t *testing.T) {
	count := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	before := count()
	for range 20 {
		j, err := Static(standalone)
		if err != nil {
			t.Fatalf("Static(%+v) = %v; want nil error", standalone, err)
		}
		j.Close()
		j.Close()
		if _, err := Static(Config{}); err == nil {
			t.Fatalf("Static(%+v) = nil error; want an error", Config{})
		}
	}
	if after := count(); after != before {
		t.Errorf("open fds after 20 Static+Close = %d; want %d", after, before)
	}
}
