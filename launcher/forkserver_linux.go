package launcher

import (
	"context"
	_ "embed" // the server's source
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/internal/procfs"
	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/ipc/python"
	"github.com/mpspawn/mpspawn/launcher/diag"
	"github.com/mpspawn/mpspawn/launcher/internal/contain"
)

//go:embed forkserver.py
var forkserverSource string

// Bounds on the forkserver's waits besides the preload (ReadyTimeout).
const (
	forkReplyTimeout   = time.Minute     // a fork request's reply (the server forks at once)
	forkserverExitWait = 5 * time.Second // the server's exit after Close, before SIGKILL
	lostRankWait       = 5 * time.Second // a lost rank's exit after SIGKILL
	releaseWait        = 5 * time.Second // the reply to a release (the rank's usage)
)

// Bounds on one fork request, given to the server at start (serverConfig):
// the launcher refuses a rank beyond them before sending anything, and the
// server refuses, with an error reply, any request beyond them.
const (
	forkserverMaxFDs    = 64      // the rank's fds 0, 1, 2 and its ExtraFiles
	forkserverMaxPacket = 4 << 20 // bytes of JSON
)

// A Forkserver is a running forkserver (see ForkserverConfig): one Python
// process, the launcher's child, in a process group of its own, with
// SIGKILL as its parent-death signal and registered with the launcher's
// guard, so that the launcher's death, even by SIGKILL, takes it and its
// ranks along. Start it with NewStartMethod(MethodForkserver, cfg), give it to Start in
// Options.Forkserver (for as many Groups as needed, one at a time or
// together), and Close it once they have ended.
type Forkserver struct {
	cfg     ForkserverConfig
	conn    *ipc.PacketConn // SOCK_SEQPACKET: one JSON message per packet
	guard   *contain.Guard
	pid     int
	started time.Time
	output  *os.File // read end of the server's stdout and stderr
	relay   sync.WaitGroup

	readyOnce sync.Once
	ready     chan struct{} // closed when the server reported ready, or failed to
	readyErr  error

	mu      sync.Mutex
	nextID  int
	pending map[int]chan forkReply          // nil once the server is dead
	exits   map[int]chan syscall.WaitStatus // running ranks' exit channels, by pid

	// stray counts the errors the server sent with no id, the last in
	// strayErr: requests it could not read an id from. The launcher's own
	// requests carry their id and stay within the server's bounds, so no
	// start waits on such a reply; they are kept for tests.
	stray    int
	strayErr string

	reaped  chan struct{} // closed when the server has been reaped
	status  string        // how it exited, once reaped
	dead    chan struct{} // closed when the server's socket has closed
	deadErr error         // why, once dead is closed
	readerD chan struct{} // the reader goroutine has returned

	releaseSlow atomic.Bool // a release went unanswered for releaseWait
	closing     atomic.Bool
	closeOnce   sync.Once
	closeErr    error // set by Close
}

type forkReply struct {
	pid    int
	exit   chan syscall.WaitStatus // receives the rank's wait status
	rusage *syscall.Rusage         // a release's: the reaped rank's usage
	err    error
}

// serverRusage is the part of a reaped rank's wait4 rusage the server
// reports.
type serverRusage struct {
	Utime  float64 `json:"utime"`  // seconds
	Stime  float64 `json:"stime"`  // seconds
	Maxrss int64   `json:"maxrss"` // kilobytes
}

func (u *serverRusage) rusage() *syscall.Rusage {
	if u == nil {
		return nil
	}
	return &syscall.Rusage{
		Utime:  syscall.NsecToTimeval(int64(u.Utime * 1e9)),
		Stime:  syscall.NsecToTimeval(int64(u.Stime * 1e9)),
		Maxrss: u.Maxrss,
	}
}

// serverMsg is any message from the server.
type serverMsg struct {
	Ready    int    `json:"ready"`    // the server's pid: preload done
	Error    string `json:"error"`    // a failed preload, or a refused fork (with ID)
	Preload  string `json:"preload"`  // the module whose import failed
	ID       *int   `json:"id"`       // reply to fork request ID
	Pid      int    `json:"pid"`      // the forked rank
	Exit     int    `json:"exit"`     // an exited rank's pid (not reaped until released)...
	Released int    `json:"released"` // reply to a release: the rank is reaped
	Status   int    `json:"status"`   // ...and its wait status

	Rusage *serverRusage `json:"rusage"` // with Released: the rank's usage
}

// serverConfig is the server's argument (CONFIG_JSON in forkserver.py).
type serverConfig struct {
	Preload   []string `json:"preload"`
	Main      []string `json:"main"`
	MaxFDs    int      `json:"max_fds"`
	MaxPacket int      `json:"max_packet"`
	StackHook string   `json:"stack_hook"` // stacks_hook.py, run in each rank
	IPC       string   `json:"ipc_module"` // mpspawn/ipc.py, whose send_fds and recv_fds the server uses
}

// forkRequest asks the server to fork a rank (Op "fork").
type forkRequest struct {
	ID   int      `json:"id"`
	Op   string   `json:"op"`
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	Cwd  string   `json:"cwd,omitempty"`
	CPUs []int    `json:"cpus,omitempty"`
	// Cgroup is the rank's cgroup: the server moves the forked child into
	// it, and then into a process group of its own, before the child runs
	// anything and before it replies. Until then the child is in the
	// server's process group, killed with the server; it never moves
	// itself, so nothing enters a rank cgroup once the server is gone.
	Cgroup string `json:"cgroup,omitempty"`
}

// releaseRequest asks the server to reap rank Pid (see Forkserver.release).
type releaseRequest struct {
	ID  int    `json:"id"`
	Op  string `json:"op"` // "release"
	Pid int    `json:"pid"`
}

// newForkserver starts a forkserver and returns at once; the preload
// goes on in the background (see Ready).
func newForkserver(cfg ForkserverConfig) (*Forkserver, error) {
	closeInherited()
	g, err := contain.StartGuard()
	if err != nil {
		return nil, err
	}
	fs := &Forkserver{
		cfg: cfg, guard: g, started: time.Now(),
		ready: make(chan struct{}), pending: map[int]chan forkReply{}, exits: map[int]chan syscall.WaitStatus{},
		reaped: make(chan struct{}), dead: make(chan struct{}), readerD: make(chan struct{}),
	}
	conn, child, err := ipc.PacketPair("forkserver")
	if err != nil {
		return nil, fmt.Errorf("launcher: forkserver socket: %w", err)
	}
	fs.conn = conn
	defer child.Close()
	out, err := fs.startProcess(child)
	if err != nil {
		fs.conn.Close()
		return nil, fmt.Errorf("launcher: start forkserver: %w", err)
	}
	g.Watch(fs.pid)
	fs.output = out
	w := cfg.Stderr
	if w == nil {
		w = os.Stderr
	}
	fs.relay.Go(func() { relayLines(out, &prefixWriter{prefix: "[forkserver]: ", w: w}) })
	go fs.read()
	return fs, nil
}

// startProcess starts the server from a locked thread that then waits for
// it: Linux sends a parent-death signal when the forking *thread* exits,
// so the thread must live exactly as long as the server.
func (fs *Forkserver) startProcess(sock *os.File) (output *os.File, err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		r.Close()
		return nil, err
	}
	defer devnull.Close()
	conf, _ := json.Marshal(serverConfig{
		Preload: fs.cfg.Preload, Main: fs.cfg.Main,
		MaxFDs: forkserverMaxFDs, MaxPacket: forkserverMaxPacket, StackHook: diag.HookSource,
		IPC: python.IPCSource(),
	})
	env := fs.cfg.Env
	if env == nil {
		env = os.Environ()
	}
	attr := &os.ProcAttr{
		Dir: fs.cfg.Dir, Env: dedupEnv(env),
		Files: []*os.File{devnull, w, w, sock},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	}
	argv := []string{fs.cfg.Python, "-u", "-c", forkserverSource, string(conf)}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the server
		p, err := os.StartProcess(fs.cfg.Python, argv, attr)
		if err != nil {
			started <- err
			return
		}
		fs.pid = p.Pid
		started <- nil
		st, err := p.Wait()
		if err != nil {
			fs.status = err.Error()
		} else {
			fs.status = st.String()
		}
		close(fs.reaped)
	}()
	if err := <-started; err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Ready waits until the server has imported the preload modules. It
// returns a *PreloadError when one failed to import, and an error when the
// server died, ctx ended or ForkserverConfig.ReadyTimeout passed first.
func (fs *Forkserver) Ready(ctx context.Context) error {
	timeout := fs.cfg.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultForkserverReadyTimeout
	}
	t := time.NewTimer(time.Until(fs.started.Add(timeout)))
	defer t.Stop()
	select {
	case <-fs.ready:
		return fs.readyErr
	case <-ctx.Done():
		return fmt.Errorf("launcher: forkserver: %w", context.Cause(ctx))
	case <-t.C:
		return fmt.Errorf("launcher: forkserver: preload %v not done after %v", fs.cfg.Preload, timeout)
	}
}

// Pid is the server's process id.
func (fs *Forkserver) Pid() int { return fs.pid }

// read dispatches the server's messages until its socket closes.
func (fs *Forkserver) read() {
	defer close(fs.readerD)
	buf := make([]byte, 64<<10)
	for {
		n, err := fs.conn.ReadPacket(buf)
		if err != nil || n == 0 {
			break
		}
		var m serverMsg
		if err := json.Unmarshal(buf[:n], &m); err != nil {
			break // not our server: treat it as dead
		}
		fs.dispatch(m)
	}
	fs.died()
}

func (fs *Forkserver) dispatch(m serverMsg) {
	switch {
	case m.ID != nil:
		r := forkReply{pid: m.Pid}
		switch {
		case m.Error != "":
			r.err = fmt.Errorf("forkserver: %s", m.Error)
		case m.Released > 0:
			r.pid, r.rusage = m.Released, m.Rusage.rusage()
		case m.Pid <= 0:
			r.err = fmt.Errorf("forkserver: a reply with no pid")
		default:
			r.exit = make(chan syscall.WaitStatus, 1)
		}
		fs.mu.Lock()
		ch := fs.pending[*m.ID]
		delete(fs.pending, *m.ID)
		if r.exit != nil {
			fs.exits[m.Pid] = r.exit
		}
		fs.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	case m.Exit > 0:
		fs.mu.Lock()
		ch := fs.exits[m.Exit]
		delete(fs.exits, m.Exit)
		fs.mu.Unlock()
		if ch != nil {
			ch <- syscall.WaitStatus(m.Status)
		}
	case m.Ready > 0:
		fs.setReady(nil)
	case m.Preload != "":
		fs.setReady(&PreloadError{Module: m.Preload, Err: m.Error})
	case m.Error != "":
		// Before ready, the server failed to start serving; after, it
		// refused a request it could not read an id from (see stray).
		fs.setReady(fmt.Errorf("launcher: forkserver: %s", m.Error))
		fs.mu.Lock()
		fs.stray++
		fs.strayErr = m.Error
		fs.mu.Unlock()
	}
}

func (fs *Forkserver) setReady(err error) {
	fs.readyOnce.Do(func() {
		fs.readyErr = err
		close(fs.ready)
	})
}

// died runs once the server's socket has closed: the server exited (after
// Close, or on its own) or is about to. It makes sure the server is gone,
// then fails whatever still waits on it.
func (fs *Forkserver) died() {
	if !fs.closing.Load() {
		killGroup(fs.pid, syscall.SIGKILL)
	}
	t := time.NewTimer(forkserverExitWait)
	select {
	case <-fs.reaped:
		t.Stop()
		fs.deadErr = fmt.Errorf("%w (pid %d, %s); every rank it started was killed", ErrForkserverDied, fs.pid, fs.status)
	case <-t.C:
		fs.deadErr = fmt.Errorf("%w (pid %d closed its socket); every rank it started was killed", ErrForkserverDied, fs.pid)
	}
	fs.setReady(fs.deadErr)
	fs.mu.Lock()
	pending := fs.pending
	fs.pending = nil
	fs.mu.Unlock()
	for _, ch := range pending {
		ch <- forkReply{err: fs.deadErr}
	}
	close(fs.dead)
}

// Close stops the server and waits for it: it closes the launcher's end of
// the socket, upon which the server kills the process groups of any rank
// still running and exits; SIGKILL follows after a bounded wait. Call it
// once every Group using the server has ended.
func (fs *Forkserver) Close() error {
	fs.closeOnce.Do(func() {
		fs.closing.Store(true)
		_ = fs.conn.CloseWrite()
		if !waitFor(fs.reaped, forkserverExitWait) {
			_ = killGroup(fs.pid, syscall.SIGKILL)
			if !waitFor(fs.reaped, DefaultKillWait) {
				// In uninterruptible sleep: report it rather than hang.
				fs.closeErr = fmt.Errorf("launcher: forkserver (pid %d) did not exit %v after SIGKILL (state %s)", fs.pid, DefaultKillWait, procfs.StateName(fs.pid))
			}
		}
		fs.conn.Close() // ends the reader, even if the server could not
		<-fs.readerD
		drained := make(chan struct{})
		go func() { fs.relay.Wait(); close(drained) }()
		waitFor(drained, time.Second) // a preloaded module's child may hold the pipe
		fs.output.Close()
		waitFor(drained, time.Second)          // a console nobody reads may hold the relay
		_ = killGroup(fs.pid, syscall.SIGKILL) // whatever the server left in its group
		fs.guard.Unwatch(fs.pid)
	})
	return fs.closeErr
}

// prefixWriter writes each line (one per Write, from relayLines) with a
// prefix, in one Write.
type prefixWriter struct {
	prefix string
	w      io.Writer
}

func (p *prefixWriter) Write(line []byte) (int, error) {
	b := make([]byte, 0, len(p.prefix)+len(line)+1)
	b = append(append(b, p.prefix...), line...)
	if len(line) == 0 || line[len(line)-1] != '\n' {
		b = append(b, '\n')
	}
	_, err := p.w.Write(b)
	return len(line), err
}
