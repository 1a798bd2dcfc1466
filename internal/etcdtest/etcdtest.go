//go:build linux

// Package etcdtest starts real etcd servers for the tests of the packages
// that use etcd (rendezvous, the CLI): the etcd binary on PATH, on free
// 127.0.0.1 ports with a temporary data directory, stopped by pid when the
// test ends. Nothing here fakes etcd.
package etcdtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds an etcd start: with the short heartbeat and election
// timeouts used here a server is ready in about 100 ms.
const startTimeout = 20 * time.Second

// stopTimeout bounds the wait for a stopped server; it is SIGKILLed after.
const stopTimeout = 10 * time.Second

// readyLine is what etcd logs once it serves clients.
const readyLine = "serving client traffic"

// Server is one running etcd server. Endpoint is its client address
// (127.0.0.1:PORT); it stays the same across Restart.
type Server struct {
	Endpoint string

	t        testing.TB
	bin      string
	dir      string
	peerPort int
	tls      *TLSFiles // serve clients over TLS, with client certificates

	mu   sync.Mutex
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{} // closed when cmd has been waited for
}

// Binary returns the etcd binary on PATH (or /usr/bin/etcd). When there is
// none it skips t, or fails it under CI=true: CI installs etcd
// (scripts/install-test-deps.sh) and a missing one must not pass.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/bin/etcd"); err == nil {
		return "/usr/bin/etcd"
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("etcd is not installed and CI=true (scripts/install-test-deps.sh installs etcd-server)")
	}
	t.Skip("etcd is not installed (apt-get install etcd-server, or run scripts/install-test-deps.sh)")
	return ""
}

// Start starts an etcd server for t, ready to serve when Start returns,
// and stops it (by pid) and removes its data when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t), dir: t.TempDir()}
	cport, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if s.peerPort, err = FreePort(); err != nil {
		t.Fatal(err)
	}
	s.Endpoint = "127.0.0.1:" + strconv.Itoa(cport)
	t.Cleanup(s.Stop)
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// Args is the etcd command line for a server on client port endpoint's and
// peer port peer, with its data in dir: one member, heartbeat 10 ms and
// election timeout 100 ms, so that it elects itself at once.
func Args(dir, endpoint string, peer int) []string {
	client := "http://" + endpoint
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	return []string{
		"--name", "default", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default=" + peerURL,
		"--heartbeat-interval=10", "--election-timeout=100",
		"--logger", "zap", "--log-outputs", "stderr", "--log-level", "info",
	}
}

func (s *Server) start() error {
	args := Args(s.dir, s.Endpoint, s.peerPort)
	if s.tls != nil {
		for i, a := range args {
			if a == "http://"+s.Endpoint {
				args[i] = "https://" + s.Endpoint
			}
		}
		args = append(args, "--cert-file", s.tls.Cert, "--key-file", s.tls.Key,
			"--trusted-ca-file", s.tls.CA, "--client-cert-auth")
	}
	cmd := exec.Command(s.bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("etcdtest: start %s: %w", s.bin, err)
	}
	log := &logBuffer{}
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		signalled := false
		for sc.Scan() {
			log.add(sc.Text())
			if !signalled && strings.Contains(sc.Text(), readyLine) {
				signalled = true
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.log, s.done = cmd, log, done
	s.mu.Unlock()
	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-done:
		return fmt.Errorf("etcdtest: etcd exited before it was ready:\n%s", log)
	case <-t.C:
		s.Stop()
		return fmt.Errorf("etcdtest: etcd not ready after %v:\n%s", startTimeout, log)
	}
}

// Pid is the running server's process id.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Pid
}

// Stop stops the server: SIGTERM, then SIGKILL after a bound. It is safe
// to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart stops the server and starts it again on the same ports with the
// same data: its keys and leases survive.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// Log is what the server has logged so far, for a failing test's message.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// FreePort returns a TCP port free on 127.0.0.1 when it returns.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("etcdtest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (b *logBuffer) add(l string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.lines) < 2000 {
		b.lines = append(b.lines, l)
	}
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}

func itoa(n int) string { return strconv.Itoa(n) }
