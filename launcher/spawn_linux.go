package launcher

// The spawned rank: forked from a locked OS thread and exec'd by the
// launcher itself (the spawn start method), waited on, signalled and
// released through its pidfd.

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// starter owns a few OS threads, each locked for as long as the ranks it
// started may run. Linux delivers a child's parent-death signal when the
// *thread* that forked it exits, so every rank is forked from one of these
// threads, which exit only after every rank has been reaped (see close).
// Several threads let ranks start in parallel: Go serialises nothing
// between concurrent forks, and each fork waits for its child's exec.
type starter struct {
	threads []*thread
}

// thread is one locked OS thread that forks ranks.
type thread struct {
	reqs chan startReq
	quit chan struct{}
	done chan struct{}
}

type startReq struct {
	rp    *rankProc
	reply chan error
}

// newStarter starts n locked threads (at least one).
func newStarter(n int) *starter {
	t := &starter{threads: make([]*thread, max(n, 1))}
	for i := range t.threads {
		th := &thread{reqs: make(chan startReq), quit: make(chan struct{}), done: make(chan struct{})}
		go th.loop()
		t.threads[i] = th
	}
	return t
}

func (th *thread) loop() {
	defer close(th.done)
	// Never unlocked: when this goroutine returns, the runtime ends the
	// thread, and that is safe only once no rank is left.
	runtime.LockOSThread()
	for {
		select {
		case r := <-th.reqs:
			r.reply <- spawn(r.rp)
		case <-th.quit:
			return
		}
	}
}

// start starts one rank from locked thread i (modulo the pool size).
func (t *starter) start(i int, rp *rankProc) error {
	reply := make(chan error, 1)
	t.threads[i%len(t.threads)].reqs <- startReq{rp, reply}
	return <-reply
}

// close ends the locked threads; call it only after every rank was reaped.
func (t *starter) close() {
	for _, th := range t.threads {
		close(th.quit)
		<-th.done
	}
}

// spawn is the spawn start method: a fresh exec of the rank's program, as
// leader of its own process group, with SIGKILL as parent-death signal and
// the rank's CPU affinity inherited from this thread.
func spawn(rp *rankProc) error {
	s := rp.spec
	files, release, err := rp.openFiles()
	if err != nil {
		return err
	}
	defer release()
	restore, err := bindThread(s.CPUs)
	if err != nil {
		rp.closePipes()
		return fmt.Errorf("cpu affinity %v: %w", s.CPUs, err)
	}
	attr := &os.ProcAttr{
		Dir:   s.Dir,
		Env:   dedupEnv(s.Env),
		Files: files,
		Sys: &syscall.SysProcAttr{
			Setpgid:   true,
			Pdeathsig: syscall.SIGKILL,
		},
	}
	if rp.cgroup != nil { // born in its cgroup: clone3 CLONE_INTO_CGROUP
		attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = true, int(rp.cgroup.Fd())
	}
	rp.started = time.Now()
	proc, err := os.StartProcess(s.Path, s.Args, attr)
	restore()
	if err != nil {
		rp.closePipes()
		return err
	}
	rp.setProcess(newExecProcess(proc))
	return nil
}

// execProcess is a rank the launcher forked and exec'd itself.
//
// Its exit is awaited on a pidfd in the runtime's poller and read without
// reaping it (waitid WNOWAIT): the rank stays a zombie, its pid and its
// process group id pinned, until the Group is done signalling its group
// and releases it. os.Process.Wait alone blocks in waitid(2): an OS thread
// per rank for the rank's whole life, and since the runtime hands a
// blocked thread's P to another thread only when sysmon next looks (20 µs
// to 10 ms later), on a machine with few CPUs the waiters hold every P and
// the launcher's other goroutines (the ranks' arguments, their output)
// wait.
type execProcess struct {
	p *os.Process
	// exited is the rank's pidfd, readable once the rank has exited; nil
	// where pidfd_open(2) with PIDFD_NONBLOCK is not available (Linux
	// before 5.10), and wait then reaps in a blocking waitid(2), without
	// pinning the pid.
	exited *os.File
	// reaped is how the process was reaped, once it was: by wait without
	// a pidfd, or by release.
	reaped *reapedState
}

type reapedState struct{ st *os.ProcessState }

var _ process = execProcess{}

// newExecProcess opens p's pidfd. The pid cannot be recycled before p is
// reaped, and only release (or wait, without a pidfd) reaps it.
func newExecProcess(p *os.Process) execProcess {
	fd, err := unix.PidfdOpen(p.Pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return execProcess{p: p, reaped: &reapedState{}}
	}
	return execProcess{p: p, exited: os.NewFile(uintptr(fd), "pidfd"), reaped: &reapedState{}}
}

func (e execProcess) pid() int { return e.p.Pid }

func (e execProcess) wait() (syscall.WaitStatus, error) {
	if e.exited != nil && awaitExit(e.exited) {
		if ws, ok := peekStatus(e.exited); ok {
			return ws, nil
		}
	}
	st, err := e.p.Wait()
	if err != nil {
		return 0, err
	}
	e.reaped.st = st
	ws, _ := st.Sys().(syscall.WaitStatus)
	return ws, nil
}

// release reaps the rank, which has exited: its pid may be reused from
// now on. It returns the rank's resource usage as the reaping wait
// returned it.
func (e execProcess) release() *syscall.Rusage {
	if e.exited != nil {
		if st, err := e.p.Wait(); err == nil { // at once: wait saw the exit
			e.reaped.st = st
		}
		e.exited.Close()
	}
	if e.reaped.st == nil {
		return nil
	}
	ru, _ := e.reaped.st.SysUsage().(*syscall.Rusage)
	return ru
}

// awaitExit parks the calling goroutine in the poller until the process
// behind pidfd has exited, without reaping it, and reports whether it saw
// the exit. If pidfd cannot be polled it returns false at once, and the
// caller's blocking wait does the waiting.
func awaitExit(pidfd *os.File) bool {
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return false
	}
	err = rc.Read(func(fd uintptr) bool {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		for err == unix.EINTR {
			err = unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		}
		// EAGAIN (a non-blocking pidfd) or no status yet: not exited.
		return err != unix.EAGAIN && (err != nil || info.Signo != 0)
	})
	return err == nil
}

// peekStatus reads the wait status of the exited process behind pidfd
// without reaping it.
func peekStatus(pidfd *os.File) (syscall.WaitStatus, bool) {
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, int(pidfd.Fd()), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil || info.Signo == 0 {
		return 0, false
	}
	// For SIGCHLD, si_status follows si_pid and si_uid in the union that
	// starts after the three ints and the padding Siginfo names.
	status := *(*int32)(unsafe.Pointer(uintptr(unsafe.Pointer(&info)) + 24))
	const cldExited, cldKilled, cldDumped = 1, 2, 3 // si_code of SIGCHLD
	switch info.Code {
	case cldExited:
		return syscall.WaitStatus(status << 8), true
	case cldKilled:
		return syscall.WaitStatus(status), true
	case cldDumped:
		return syscall.WaitStatus(status | 0x80), true
	}
	return 0, false
}

// bindThread sets the calling (locked) thread's CPU affinity to cpus, so
// that a child forked from it starts bound, and returns a func restoring
// the previous mask. Empty cpus changes nothing.
func bindThread(cpus []int) (restore func(), err error) {
	if len(cpus) == 0 {
		return func() {}, nil
	}
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return nil, err
	}
	for _, c := range cpus {
		if c < 0 || c >= len(set)*64 {
			return nil, fmt.Errorf("cpu %d out of range", c)
		}
		set.Set(c)
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return nil, err
	}
	return func() { _ = unix.SchedSetaffinity(0, &old) }, nil
}

// signal sends sig to the rank through its pidfd (os.Process uses one
// where the kernel has them).
func (e execProcess) signal(sig syscall.Signal) error {
	if err := e.p.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// abandon closes the pidfd; the waiter then blocks in waitid(2) for good,
// or until the rank can be reaped after all.
func (e execProcess) abandon() {
	if e.exited != nil {
		e.exited.Close()
	}
}
