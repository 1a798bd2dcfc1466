package launcher

import (
	"os"
	"syscall"
)

// HandledSignals returns the signals that Group.Forward handles: the
// forwarded signals, the job-control signals and SIGPIPE. A front that
// runs a Group notifies itself of these and hands each to Forward.
func HandledSignals() []os.Signal {
	return append(append(ForwardedSignals(), syscall.SIGPIPE), suspendSignals...)
}

// Forward handles a signal the launcher received while the Group runs:
// SIGPIPE is ignored (a reader of the launcher's output went away);
// SIGTSTP and SIGCONT suspend and resume the ranks with the launcher;
// PassedSignals are delivered without stopping the job (Deliver); any
// other signal stops the ranks (Signal).
func (g *Group) Forward(sig os.Signal) {
	switch {
	case sig == syscall.SIGPIPE:
	case suspend(g, sig):
	case pass(g, sig):
	default:
		g.Signal(sig)
	}
}
