package launcher

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// ForwardedSignals are the signals a running Job forwards to its ranks.
var ForwardedSignals = []os.Signal{
	syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP,
	syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
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
