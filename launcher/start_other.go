//go:build !linux

package launcher

import (
	"os"
	"syscall"
)

// On platforms other than Linux there is no parent-death signal, no
// process-group guard and no CPU affinity: Start refuses to run ranks rather
// than run them without mpspawn's guarantees.

// ForwardedSignals are the signals a running Job forwards to its ranks.
var ForwardedSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}

var platformSignalNames = map[syscall.Signal]string{}

type starter struct{}

func newStarter(int) *starter                       { return &starter{} }
func (*starter) start(int, Spec) (*rankProc, error) { return nil, ErrUnsupported }
func (*starter) close()                             {}

func closeInherited() {}

// killGroup has no group to signal: no rank runs on this platform.
func killGroup(int, syscall.Signal) error { return ErrUnsupported }

type startReply struct {
	rp  *rankProc
	err error
}

var suspendSignals []os.Signal

func suspend(*Group, os.Signal) bool { return false }

// PassedSignals are the forwarded signals that do not stop the job: none
// here.
var PassedSignals = []os.Signal{}

func pass(*Group, os.Signal) bool { return false }

// leadsGroup knows no process groups on this platform.
func leadsGroup(int) bool { return false }
