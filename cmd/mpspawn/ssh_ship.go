package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// --ship copies this mpspawn to a private directory on each host through
// an ssh session that stays open for the whole job: the keeper. The shell
// it runs removes the directory when it exits, and it exits when its stdin
// ends: when the driver closes it after the job, or when the driver dies,
// even by SIGKILL in the middle of the copy (its end of the pipe closes
// with it). So no copy outlives the job on any host.

// shipScript makes a private directory, copies the n bytes that follow on
// stdin into it as mpspawn, prints its path, and holds the directory until
// stdin ends.
func shipScript(n int) string {
	size := strconv.Itoa(n)
	return `d=$(mktemp -d "${TMPDIR:-/tmp}/mpspawn-ship.XXXXXX") || exit 1; trap 'rm -rf "$d"' EXIT; trap 'exit 1' HUP INT TERM PIPE; ` +
		`head -c ` + size + ` > "$d/mpspawn" && [ "$(wc -c < "$d/mpspawn")" -eq ` + size + ` ] && chmod 700 "$d/mpspawn" && echo "$d/mpspawn" && cat > /dev/null`
}

// keeper is the ssh session that holds a host's shipped copy.
type keeper struct {
	stdin  io.WriteCloser
	kill   func() error
	exited chan error
}

// firstLine sends the first line written to it on line (buffered, 1).
type firstLine struct {
	mu   sync.Mutex
	buf  []byte
	done bool
	line chan string
}

func (w *firstLine) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.buf = append(w.buf, p...)
		if i := bytes.IndexByte(w.buf, '\n'); i >= 0 {
			w.done = true
			w.line <- string(w.buf[:i])
		}
	}
	return len(p), nil
}

// shipTo copies binary to h through its keeper session, within the ssh
// timeout and a minute for the copy.
func (f *fanout) shipTo(ctx context.Context, h *sshHost, binary []byte) error {
	argv := f.sshArgv(h.Host, shipScript(len(binary)))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.WaitDelay = time.Second
	out := &firstLine{line: make(chan string, 1)}
	var stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = out, &stderr
	stdin, err := cmd.StdinPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		return &HostError{Host: h.Host, What: "ssh failed", Line: err.Error()}
	}
	k := &keeper{stdin: stdin, kill: cmd.Process.Kill, exited: make(chan error, 1)}
	go func() { k.exited <- cmd.Wait() }()
	go func() { _, _ = stdin.Write(binary) }()
	timer := time.NewTimer(f.timeout + time.Minute)
	defer timer.Stop()
	select {
	case line := <-out.line:
		h.bin, h.keeper = line, k
		return nil
	case <-k.exited:
		code := cmd.ProcessState.ExitCode()
		if code == 255 || code < 0 {
			return &HostError{Host: h.Host, What: "ssh failed", Line: lastNonEmpty(stderr.Bytes())}
		}
		return &HostError{Host: h.Host, What: fmt.Sprintf("--ship: the copy failed (exit code %d)", code), Line: lastNonEmpty(stderr.Bytes())}
	case <-timer.C:
	case <-ctx.Done():
	}
	_ = k.kill()
	<-k.exited
	return &HostError{Host: h.Host, What: fmt.Sprintf("--ship: no copy within --ssh-timeout %v and a minute", f.timeout), Line: lastNonEmpty(stderr.Bytes())}
}

// unship ends every keeper session, so that each host removes its copy,
// and waits for them, within the ssh timeout.
func (f *fanout) unship(hosts []*sshHost) {
	var wg sync.WaitGroup
	for _, h := range hosts {
		k := h.keeper
		if k == nil {
			continue
		}
		h.keeper = nil
		wg.Go(func() {
			_ = k.stdin.Close()
			select {
			case <-k.exited:
			case <-time.After(f.timeout + 5*time.Second):
				_ = k.kill()
				<-k.exited
			}
		})
	}
	wg.Wait()
}

// lockedBuffer is a bytes.Buffer that a process's output goroutine may
// write while another reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes is a copy of what was written so far.
func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
