package launcher

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/mpspawn/mpspawn/place"
)

// ErrUnsupported is returned by Start on platforms where ranks cannot be
// supervised with mpspawn's guarantees (anything but Linux).
var ErrUnsupported = errors.New("launcher: only Linux is supported")

// Spec describes one rank process.
type Spec struct {
	Rank      int // global rank; labels the rank in results
	LocalRank int // rank on this node

	Path string   // program to execute, already resolved (see exec.LookPath)
	Args []string // argv; Args[0] is the program's name
	Env  []string // the whole environment, "KEY=value"
	Dir  string   // working directory; empty means the launcher's

	// ExtraFiles become file descriptors 3, 4, ... in the rank.
	ExtraFiles []*os.File

	// CPUs, when not empty, is the set of CPUs the rank is bound to before its
	// program runs (sched_setaffinity).
	CPUs place.CPUSet

	// Stdout and Stderr receive the rank's output, one complete line per
	// Write call (see Output). Nil discards the stream.
	Stdout, Stderr io.Writer

	// ErrorFile is where the rank may write a torchelastic error file
	// (TORCHELASTIC_ERROR_FILE); it is read after the rank exits. Empty
	// means none.
	ErrorFile string
}

// Containment is how the launcher makes sure that nothing a job started
// outlives it.
type Containment string

// The containments.
const (
	// ContainAuto uses cgroups where the launcher can make them, and
	// process groups otherwise.
	ContainAuto Containment = ""
	// ContainCgroup puts the job in a cgroup v2 subtree, a cgroup per rank,
	// each rank born inside its own; cgroup.kill ends every descendant at
	// once, however it left its process group or session. Start fails
	// where cgroups cannot be made (they need root, or a delegated
	// subtree such as a `systemd-run --user --scope -p Delegate=yes`
	// scope).
	ContainCgroup Containment = "cgroup"
	// ContainProcessGroup signals each rank's process group, and makes the
	// launcher a child subreaper so that descendants whose parent died are
	// re-parented to it and swept at the end, if they still carry the
	// job's mark in their environment. A daemon that both left the rank's
	// group and cleared its environment escapes.
	ContainProcessGroup Containment = "process-group"
)

func validate(specs []Spec) error {
	if len(specs) == 0 {
		return errors.New("launcher: no ranks to start")
	}
	seen := make(map[int]bool, len(specs))
	for i, s := range specs {
		if s.Path == "" || len(s.Args) == 0 {
			return fmt.Errorf("launcher: rank %d: no program", s.Rank)
		}
		if seen[s.Rank] {
			return fmt.Errorf("launcher: spec %d: rank %d given twice", i, s.Rank)
		}
		seen[s.Rank] = true
	}
	return nil
}
