package launcher

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// guardScript is the guard process: it reads "+PGID" lines from the pipe
// only the launcher holds and, when the pipe reaches EOF without a final
// "done" (the launcher died, even by SIGKILL), kills every process group it
// was told of. It ignores the signals a terminal or the launcher's own
// process group might receive, and runs in a session of its own.
const guardScript = `trap '' INT TERM HUP QUIT USR1 USR2 PIPE
g=
while IFS= read -r l; do
	case $l in
	+*) g="$g -${l#+}" ;;
	done) exit 0 ;;
	esac
done
[ -n "$g" ] && kill -s KILL -- $g 2>/dev/null
exit 0`

// guard is the launcher's side of the guard process.
type guard struct {
	w    *os.File
	proc *os.Process
}

// startGuard starts the guard process. It is started without a
// parent-death signal: it must outlive the launcher to do its job.
func startGuard() (*guard, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("launcher: guard pipe: %w", err)
	}
	defer r.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("launcher: guard: %w", err)
	}
	defer devnull.Close()
	p, err := os.StartProcess("/bin/sh", []string{"mpspawn-guard", "-c", guardScript}, &os.ProcAttr{
		Files: []*os.File{r, devnull, devnull},
		Env:   []string{"PATH=/usr/bin:/bin"},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("launcher: start guard: %w", err)
	}
	return &guard{w: w, proc: p}, nil
}

// watch tells the guard about a rank's process group.
func (g *guard) watch(pgid int) {
	_, _ = g.w.WriteString("+" + strconv.Itoa(pgid) + "\n")
}

// release tells the guard the job ended cleanly and reaps it, waiting at
// most a second before killing it.
func (g *guard) release() {
	_, _ = g.w.WriteString("done\n")
	g.w.Close()
	exited := make(chan struct{})
	go func() {
		_, _ = g.proc.Wait()
		close(exited)
	}()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = g.proc.Kill()
		<-exited
	}
}
