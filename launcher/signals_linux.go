package launcher

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"syscall"
)

// ForwardedSignals returns the signals a running job forwards to its
// ranks (see Group.Forward). SIGUSR1 and SIGUSR2 are passed on and the job
// goes on (see PassedSignals); the others stop the job: SIGTERM, then
// SIGKILL after the grace period.
func ForwardedSignals() []os.Signal { return slices.Clone(forwardedSignals) }

var forwardedSignals = []os.Signal{
	syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP,
	syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
}

// PassedSignals returns the forwarded signals that do not stop the job:
// Group.Forward sends them to every rank (its process and its process
// group) and starts no SIGKILL countdown. SLURM's --signal=USR1@60 asks a
// job to checkpoint before its time limit this way; a rank that does not
// handle the signal dies of it, and that failure stops the job as any
// other does.
func PassedSignals() []os.Signal { return slices.Clone(passedSignals) }

var passedSignals = []os.Signal{syscall.SIGUSR1, syscall.SIGUSR2}

// pass delivers sig to the ranks without stopping the job, and reports
// whether sig is one of PassedSignals.
func pass(g *Group, sig os.Signal) bool {
	s, ok := sig.(syscall.Signal)
	if !ok || !slices.Contains(passedSignals, sig) {
		return false
	}
	g.Deliver(s)
	return true
}

// suspendSignals are the job-control signals a running Job passes on to
// its ranks, which are not in the terminal's foreground process group.
var suspendSignals = []os.Signal{syscall.SIGTSTP, syscall.SIGCONT}

// suspend handles a job-control signal, and reports whether sig was one:
// on SIGTSTP (Ctrl-Z) the ranks are stopped, then the launcher stops
// itself; on SIGCONT (fg, bg) the ranks go on with it.
func suspend(g *Group, sig os.Signal) bool {
	switch sig {
	case syscall.SIGTSTP:
		g.Deliver(syscall.SIGTSTP)
		_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
	case syscall.SIGCONT:
		g.Deliver(syscall.SIGCONT)
	default:
		return false
	}
	return true
}

var platformSignalNames = map[syscall.Signal]string{
	syscall.SIGUSR1: "SIGUSR1", syscall.SIGUSR2: "SIGUSR2",
}

// killGroup sends sig to the process group led by pid. A group that is
// already gone (ESRCH) is not an error: its processes have exited. Every
// other failure is returned: EPERM (no process left in the group may be
// signalled by the launcher, such as a setuid program), EINVAL (not a
// signal). A pid below 2 is refused without a signal sent, as kill(2) would
// read -0 as the launcher's own group and -1 as every process it may signal.
func killGroup(pid int, sig syscall.Signal) error {
	if pid < 2 {
		return fmt.Errorf("launcher: signal process group %d: not a rank's process id", pid)
	}
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("launcher: signal process group %d with %s: %w", pid, SignalName(sig), err)
	}
	return nil
}

// leadsGroup says whether pid is still the leader of its own process group,
// so that a signal to the group reaches it.
func leadsGroup(pid int) bool {
	pgid, err := syscall.Getpgid(pid)
	return err == nil && pgid == pid
}
