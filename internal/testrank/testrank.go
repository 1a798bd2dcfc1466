//go:build linux

// Package testrank is the helper rank the tests of several packages launch:
// one rank program, built into each test binary (the os/exec helper-command
// pattern), so that the launcher's tests, the CLI's scripts and the ipc
// tests start the same program the same way.
//
// A process is the helper rank when its argv[0] is [Name], the rule
// testscript uses for the commands it puts on $PATH. A package's TestMain
// calls [Run] first; the CLI's TestMain registers [Main] with testscript
// under the same name. A rank that must tell its test it is ready (its
// signal handlers are installed, its child is started) takes the path of a
// FIFO or pipe to write one line to, see [WriteReady]: a script passes a
// FIFO it made, a Go test passes [ReadyFD] with a pipe as the rank's first
// extra file, or [os.DevNull] when it does not wait.
package testrank

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Name is the argv[0] under which a test binary acts as the helper rank.
const Name = "rank"

// Exe is the binary a test re-executes: its own, wherever it is now on
// disk.
const Exe = "/proc/self/exe"

// ReadyFD is the readiness path of a process whose first extra file
// (exec.Cmd.ExtraFiles[0], fd 3) is the pipe its parent waits on.
const ReadyFD = "/dev/fd/3"

// Run lets the test binary act as helper programs: when the base of this
// process's argv[0] names one of programs, Run runs it with the remaining
// arguments and exits with the code it returns. Otherwise Run returns and
// TestMain goes on to run the tests. A package whose helper rank has modes
// of its own maps [Name] to a function that handles those and passes every
// other mode to [Main].
func Run(programs map[string]func(args []string) int) {
	if main, ok := programs[filepath.Base(os.Args[0])]; ok {
		os.Exit(main(os.Args[1:]))
	}
}

// Command returns a command that runs this test binary as the helper rank
// with args, a mode and its arguments.
func Command(args ...string) *exec.Cmd {
	cmd := exec.Command(Exe, args...)
	cmd.Args[0] = Name
	return cmd
}

// WriteReady writes line to the FIFO or pipe at path: the rank's readiness
// signal. It reports a failure on stderr; the test waiting for the line
// then fails on its own bound.
func WriteReady(path, line string) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "rank: ready: %v\n", err)
		return
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, line); err != nil {
		fmt.Fprintf(os.Stderr, "rank: ready: %v\n", err)
	}
}

// BlockForever parks the rank until a signal ends it. (A bare select{}
// would be reported as a deadlock by the runtime.) pause(2) returns after
// every signal the runtime catches, hence the loop.
func BlockForever() int {
	for {
		_ = unix.Pause()
	}
}
