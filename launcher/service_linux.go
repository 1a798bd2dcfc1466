package launcher

import (
	"fmt"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// StartService starts spec's process and waits until it says it is ready.
// The process gets SIGKILL if the launcher dies, even by SIGKILL: it is
// started from a thread locked for it that lives until the process exits.
func StartService(spec ServiceSpec) (*Service, error) {
	s := &Service{spec: spec, done: make(chan struct{}), log: &serviceLog{}}
	started := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends after the process
		cmd := exec.Command(spec.Path, spec.Args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		stderr, err := cmd.StderrPipe()
		if err == nil {
			err = cmd.Start()
		}
		if err != nil {
			started <- err
			close(s.done)
			return
		}
		s.pid = cmd.Process.Pid
		started <- nil
		scanReady(stderr, s.log, spec.Ready, ready)
		_ = cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("launcher: start %s: %w", spec.Name, err)
	}
	d := spec.ReadyTimeout
	if d <= 0 {
		d = 10 * time.Second
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ready:
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("launcher: %s: %w: %s", spec.Name, ErrServiceExited, lastLine(s.log.String()))
	case <-t.C:
		s.Stop(time.Second)
		return nil, fmt.Errorf("launcher: %s not ready within %v: %s", spec.Name, d, lastLine(s.log.String()))
	}
}

// Stop stops the service: SIGTERM, then SIGKILL after grace, and waits
// (bounded by KillWait after the SIGKILL) until it has been reaped.
func (s *Service) Stop(grace time.Duration) {
	s.stop.Do(func() {
		_ = syscall.Kill(s.pid, syscall.SIGTERM)
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		_ = syscall.Kill(-s.pid, syscall.SIGKILL)
		_ = syscall.Kill(s.pid, syscall.SIGKILL)
		select { // bounded: a process in state D is left behind
		case <-s.done:
		case <-time.After(DefaultKillWait):
		}
	})
}

func lastLine(s string) string {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}
