package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
)

// sshRun is the driver's side of the started nodes: their ssh sessions,
// the console lines they send, and the stop of them all.
type sshRun struct {
	f     *fanout
	con   console
	hosts []*sshHost
	grace time.Duration
	nonce string

	mu     sync.Mutex // the console, stdins and procs
	stdins []io.WriteCloser
	procs  []*os.Process
	halted bool
}

// run starts every host's session and waits for them all; it returns the
// signal that interrupted the driver, or nil.
func (r *sshRun) run() os.Signal {
	r.stdins, r.procs = make([]io.WriteCloser, len(r.hosts)), make([]*os.Process, len(r.hosts))
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigc)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := range r.hosts {
		wg.Go(func() { r.session(i) })
	}
	go func() { wg.Wait(); close(done) }()
	var got os.Signal
	var killAt <-chan time.Time
	for {
		select {
		case <-done:
			return got
		case s := <-sigc:
			if got != nil && s == syscall.SIGINT {
				fmt.Fprintf(r.con.stderr, "mpspawn: SIGINT again: ending the ssh sessions now\n")
				r.kill()
				continue
			}
			if got == nil {
				got = s
				fmt.Fprintf(r.con.stderr, "mpspawn: %s: stopping the job on %d hosts, up to %v\n", launcher.SignalName(s.(syscall.Signal)), len(r.hosts), r.grace)
				r.halt()
				killAt = time.After(r.grace + 10*time.Second)
			}
		case <-killAt:
			fmt.Fprintf(r.con.stderr, "mpspawn: warning: hosts still running %v after the stop; ending their ssh sessions\n", r.grace+10*time.Second)
			r.kill()
		}
	}
}

// halt closes every node's stdin: each stops its ranks and exits.
func (r *sshRun) halt() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.halted = true
	for _, w := range r.stdins {
		if w != nil {
			_ = w.Close()
		}
	}
}

// kill ends every ssh session at once; the nodes see their stdin end.
func (r *sshRun) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.procs {
		if p != nil {
			_ = p.Kill()
		}
	}
}

// session runs host i's ssh session to its end. The thread that starts
// ssh stays locked to the goroutine until ssh is reaped: ssh gets SIGKILL
// when the driver dies (see sessionAttr).
func (r *sshRun) session(i int) {
	runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
	h := r.hosts[i]
	cmd := exec.Command(h.argv[0], h.argv[1:]...)
	cmd.SysProcAttr = sessionAttr()
	stdin, err1 := cmd.StdinPipe()
	stdout, err2 := cmd.StdoutPipe()
	stderr, err3 := cmd.StderrPipe()
	err := firstErr(err1, err2, err3)
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		h.code, h.lastLine = 255, err.Error()
		r.halt()
		return
	}
	r.mu.Lock()
	r.stdins[i], r.procs[i] = stdin, cmd.Process
	if r.halted {
		_ = stdin.Close()
	}
	r.mu.Unlock()
	_ = r.writeHeader(stdin, h)
	var wg sync.WaitGroup
	wg.Go(func() { r.relay(stdout, h, false) })
	wg.Go(func() { r.relay(stderr, h, true) })
	wg.Wait()
	_ = cmd.Wait()
	h.code = cmd.ProcessState.ExitCode()
	if h.summary == nil {
		// The node or its connection died: stop the others at once,
		// rather than when the rendezvous notices.
		r.halt()
	}
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// writeHeader writes h's header line to its node.
func (r *sshRun) writeHeader(w io.Writer, h *sshHost) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.halted {
		return nil
	}
	return writeHeaderLine(w, h.header)
}

// relay copies a node's lines to the console whole, one at a time; from
// stderr it takes the node's summary, and names the host in mpspawn's own
// lines.
func (r *sshRun) relay(rd io.Reader, h *sshHost, isStderr bool) {
	br := bufio.NewReaderSize(rd, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			if !strings.HasSuffix(line, "\n") {
				line += "\n"
			}
			r.line(h, line, isStderr)
		}
		if err != nil {
			return
		}
	}
}

func (r *sshRun) line(h *sshHost, line string, isStderr bool) {
	if !isStderr {
		r.mu.Lock()
		_, _ = io.WriteString(r.con.stdout, line)
		r.mu.Unlock()
		return
	}
	if s := readSummaryLine(strings.TrimSuffix(line, "\n"), r.nonce); s != nil {
		h.summary = s
		return
	}
	if dir := readLogsLine(strings.TrimSuffix(line, "\n"), r.nonce); dir != "" {
		h.logDir = dir
		return
	}
	if !strings.HasPrefix(line, "["+h.Host+":") {
		h.lastLine = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "mpspawn: "); ok {
			line = "mpspawn: " + h.Host + ": " + rest
		} else {
			line = h.Host + ": " + line
		}
	}
	r.mu.Lock()
	_, _ = io.WriteString(r.con.stderr, line)
	r.mu.Unlock()
}

// verdict prints the job's root cause once and returns its exit code:
// the root-cause node's, else the first host that failed without one.
func (r *sshRun) verdict(script string, sig os.Signal) error {
	if root := r.rootNode(); root != nil {
		s := root.summary
		for _, list := range [][]jobRank{s.Failures, s.Ranks} {
			for i := range list {
				list[i].Host = root.Host
			}
		}
		if s.RootCause != nil {
			s.RootCause.Host = root.Host
		}
		s.WriteText(r.con.stderr, script+" on "+root.Host)
		if sig == nil {
			return exitCode(s.ExitCode)
		}
	}
	for _, h := range r.hosts {
		if h.summary == nil && h.code != 0 && sig == nil {
			return fmt.Errorf("%w", &HostError{Host: h.Host, What: fmt.Sprintf("ended with exit code %d before the job's result was known", h.code), Line: h.lastLine})
		}
	}
	if s, ok := sig.(syscall.Signal); ok {
		return exitCode(128 + int(s))
	}
	for _, h := range r.hosts {
		if h.code != 0 {
			return exitCode(h.code)
		}
	}
	return nil
}

// rootNode is the host whose own rank is the job's root cause, else the
// first host whose summary says the job failed; nil when none did.
func (r *sshRun) rootNode() *sshHost {
	var first *sshHost
	for _, h := range r.hosts {
		s := h.summary
		if s == nil || s.Status == "succeeded" {
			continue
		}
		if s.RootCause != nil && slices.ContainsFunc(s.Ranks, func(x jobRank) bool { return x.Rank == s.RootCause.Rank }) {
			return h
		}
		if first == nil {
			first = h
		}
	}
	return first
}
