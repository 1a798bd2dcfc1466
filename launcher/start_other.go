//go:build !linux

package launcher

import (
	"os"
	"syscall"
)

// On platforms other than Linux there is no parent-death signal, no
// process-group guard and no CPU affinity: Start refuses to run ranks rather
// than run them without mpspawn's guarantees.

// ForwardedSignals returns the signals a running job forwards to its
// ranks (see Group.Forward).
func ForwardedSignals() []os.Signal { return []os.Signal{os.Interrupt, syscall.SIGTERM} }

var forwardedSignals = ForwardedSignals()

var platformSignalNames = map[syscall.Signal]string{}

type starter struct{}

func newStarter(int) *starter               { return &starter{} }
func (*starter) start(int, *rankProc) error { return ErrUnsupported }
func (*starter) close()                     {}

func closeInherited() {}

// killGroup has no group to signal: no rank runs on this platform.
func killGroup(int, syscall.Signal) error { return ErrUnsupported }

var suspendSignals []os.Signal

func suspend(*Group, os.Signal) bool { return false }

// PassedSignals returns none: no signal is passed on off Linux.
func PassedSignals() []os.Signal { return nil }

func pass(*Group, os.Signal) bool { return false }

// leadsGroup knows no process groups on this platform.
func leadsGroup(int) bool { return false }
