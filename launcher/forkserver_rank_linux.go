package launcher

// The forked rank: forked by the forkserver on the launcher's request,
// its exit reported by the server, signalled through a pidfd and released
// by asking the server to reap it.

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/internal/pidfd"

	"golang.org/x/sys/unix"
)

// start forks one rank from the server: its files travel with the request
// (SCM_RIGHTS), and the reply carries its pid. The server has already set
// the rank's process group, so the launcher may signal it at once.
func (fs *Forkserver) start(rp *rankProc) error {
	s := rp.spec
	if s.Path != fs.cfg.Python {
		return fmt.Errorf("forkserver runs %s, not %s: only Python ranks of its interpreter can be forked", fs.cfg.Python, s.Path)
	}
	if n := len(s.ExtraFiles); 3+n > forkserverMaxFDs {
		return fmt.Errorf("forkserver: the rank has %d extra files; a forked rank can have at most %d (fds 3 to %d)", n, forkserverMaxFDs-3, forkserverMaxFDs-1)
	}
	files, release, err := rp.openFiles()
	if err != nil {
		return err
	}
	defer release()
	reply, id, err := fs.expect()
	if err != nil {
		rp.closePipes()
		return err
	}
	req, err := json.Marshal(forkRequest{ID: id, Op: "fork", Argv: s.Args[1:], Env: dedupEnv(s.Env), Cwd: s.Dir, CPUs: s.CPUs, Cgroup: rp.cgroupPath})
	rp.started = time.Now()
	switch {
	case err != nil:
	case len(req) > forkserverMaxPacket:
		err = syscall.EMSGSIZE // beyond the server's bound, as beyond the socket's
	default:
		err = fs.conn.WritePacket(req, files...)
	}
	if err != nil {
		fs.forget(id)
		rp.closePipes()
		if errors.Is(err, syscall.EMSGSIZE) {
			return fmt.Errorf("forkserver: the rank's request (%d bytes, mostly its environment) is too large", len(req))
		}
		return fmt.Errorf("forkserver: %w", err)
	}
	t := time.NewTimer(forkReplyTimeout)
	defer t.Stop()
	var r forkReply
	select {
	case r = <-reply:
	case <-t.C:
		fs.forget(id)
		r.err = fmt.Errorf("forkserver (pid %d): no reply to a fork request after %v", fs.pid, forkReplyTimeout)
	}
	if r.err != nil {
		rp.closePipes()
		return r.err
	}
	pidfd, err := unix.PidfdOpen(r.pid, 0)
	if err != nil {
		pidfd = -1 // already exited and reaped: its status is on the way
	}
	rp.setProcess(&forkedProcess{fs: fs, pidv: r.pid, exit: r.exit, pidfd: pidfd})
	return nil
}

// release asks the server to reap rank pid, which it reported exited, and
// returns the rank's resource usage from the server's wait4, or nil when
// no reply came within releaseWait (the server is gone, or stopped: it
// reaps whatever is left when it closes). After one such wait, later
// releases do not wait, so a Group's end waits releaseWait at most once.
func (fs *Forkserver) release(pid int) *syscall.Rusage {
	reply, id, err := fs.expect()
	if err != nil {
		return nil // the server is gone, and its ranks were reaped with it
	}
	req, err := json.Marshal(releaseRequest{ID: id, Op: "release", Pid: pid})
	if err == nil {
		err = fs.conn.WritePacket(req)
	}
	if err != nil {
		fs.forget(id)
		return nil
	}
	if fs.releaseSlow.Load() {
		fs.forget(id) // a server that did not answer one release in time is not waited for again
		return nil
	}
	t := time.NewTimer(releaseWait)
	defer t.Stop()
	select {
	case r := <-reply:
		return r.rusage
	case <-t.C:
		fs.releaseSlow.Store(true)
		fs.forget(id)
		return nil
	}
}

// expect registers a fork request's reply channel under a new id.
func (fs *Forkserver) expect() (chan forkReply, int, error) {
	ch := make(chan forkReply, 1)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.pending == nil {
		<-fs.dead // pending is nil only once died has run, which closes dead last
		return nil, 0, fs.deadErr
	}
	fs.nextID++
	fs.pending[fs.nextID] = ch
	return ch, fs.nextID, nil
}

func (fs *Forkserver) forget(id int) {
	fs.mu.Lock()
	delete(fs.pending, id)
	fs.mu.Unlock()
}

// forkedProcess is a rank the forkserver forked: the server's child, whose
// wait status the server reports. If the server dies first, the rank is
// killed (its parent-death signal already did) and waited for on a pidfd.
type forkedProcess struct {
	fs    *Forkserver
	pidv  int
	exit  chan syscall.WaitStatus
	pidfd int // -1 when the rank was gone before it could be opened

	closeOnce sync.Once // for pidfd
}

var _ process = (*forkedProcess)(nil)

func (p *forkedProcess) pid() int { return p.pidv }

func (p *forkedProcess) wait() (syscall.WaitStatus, error) {
	select {
	case ws := <-p.exit:
		return ws, nil
	case <-p.fs.dead:
	}
	select {
	case ws := <-p.exit: // reported just before the server went
		return ws, nil
	default:
	}
	killGroup(p.pidv, syscall.SIGKILL)
	if p.pidfd >= 0 {
		pidfd.Wait(p.pidfd, lostRankWait)
	}
	return 0, p.fs.deadErr
}

// signal sends sig to the forked rank through the pidfd opened when the
// server reported its pid.
func (p *forkedProcess) signal(sig syscall.Signal) error {
	if p.pidfd < 0 {
		return nil // gone before it could be opened
	}
	if err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// release tells the server to reap the rank, which it reported exited,
// and closes the pidfd: the supervisor signals its group no more. It
// returns the rank's usage as the server's wait4 returned it.
func (p *forkedProcess) release() (ru *syscall.Rusage) {
	p.closeOnce.Do(func() {
		ru = p.fs.release(p.pidv)
		if p.pidfd >= 0 {
			unix.Close(p.pidfd)
		}
	})
	return ru
}

// abandon closes the pidfd; the server reaps the rank if it ever can.
func (p *forkedProcess) abandon() {
	p.closeOnce.Do(func() {
		if p.pidfd >= 0 {
			unix.Close(p.pidfd)
		}
	})
}
