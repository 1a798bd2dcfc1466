//go:build linux

package testrank

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Main is the helper rank: it runs the mode args[0] with the arguments
// that follow and returns the exit code. $RANK is the rank's, as the
// launcher's contract sets it. The modes:
//
//	rank exit CODE             exit with CODE
//	rank block READY           write "PID" to READY, then wait for a signal
//	rank ignore READY SIG...   ignore the signals (by number), write "PID"
//	                           to READY, then wait for another
//	rank exit-on-signal READY  write "PID" to READY, then exit 0 on SIGTERM
//	rank family READY [CODE]   start a child rank that ignores SIGTERM and,
//	                           once it is ready, write "PID CHILDPID" to
//	                           READY; then exit CODE, or wait for a signal
//	rank fail R CODE READY GO  as family READY; then rank R reads a byte
//	                           from GO and exits CODE; the others wait
//	rank leave-group READY     start a child in a process group of its own,
//	                           move this process into the child's group,
//	                           write "PID CHILDPID" to READY and wait for a
//	                           signal (a rank its group's signals miss)
//	rank escape READY          as leave-group, and clear the parent-death
//	                           signal too: only a signal to this very pid
//	                           ends it when its launcher dies
//	rank daemons READY [CODE]  start daemons of every kind — a child in a
//	                           new session, one in a new process group, and
//	                           a double-forked one in a new session — write
//	                           "PID" to READY, then exit CODE or wait
//	rank orphan                start a child in a new session and exit at
//	                           once (the first fork of a double fork)
//	rank print N SIZE          print N lines of SIZE bytes tagged with RANK
//	rank env                   print the rank contract, sorted
//	rank errorfile R MESSAGE   rank R writes a torch @record error file
//	                           ($TORCHELASTIC_ERROR_FILE) with MESSAGE and
//	                           exits 1; the others wait
//	rank affinity              print the CPUs this process may run on
//	rank listen READY GO       rank 0 listens on MASTER_PORT as torch's
//	                           TCPStore does (SO_REUSEADDR, [::]), writes the
//	                           port to READY, and holds it until it reads a
//	                           byte from GO; other ranks exit 0
//	rank alloc MIB             allocate and touch MIB mebibytes, exit 0
//	rank spin MS               burn MS ms of CPU time, exit 0
//	rank stuck READY           write "PID" to READY, then wait for a signal
//	                           in stuckInAllreduce, printing nothing
//
// A malformed number in the arguments is a mistake in the test: Main
// panics.
func Main(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "rank: no mode")
		return 2
	}
	m, ok := modes[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "rank: unknown mode %q\n", args[0])
		return 2
	}
	if len(args)-1 < m.min {
		fmt.Fprintf(os.Stderr, "usage: rank %s %s\n", args[0], m.usage)
		return 2
	}
	return m.run(args[1:])
}

// mode is one of Main's modes: run gets the arguments after the mode's
// name, at least min of them.
type mode struct {
	usage string
	min   int
	run   func(args []string) int
}

// modes is never changed after init.
var modes = map[string]mode{
	"exit":           {"CODE", 1, func(a []string) int { return atoi(a[0]) }},
	"block":          {"READY", 1, block},
	"ignore":         {"READY SIG...", 1, ignore},
	"exit-on-signal": {"READY", 1, exitOnSignal},
	"family":         {"READY [CODE]", 1, familyMode},
	"fail":           {"R CODE READY GO", 4, fail},
	"leave-group":    {"READY", 1, leaveGroup},
	"escape":         {"READY", 1, escape},
	"daemons":        {"READY [CODE]", 1, daemons},
	"orphan":         {"", 0, orphan},
	"print":          {"N SIZE", 2, printLines},
	"env":            {"", 0, env},
	"errorfile":      {"R MESSAGE", 2, errorFile},
	"affinity":       {"", 0, affinity},
	"listen":         {"READY GO", 2, listen},
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(fmt.Sprintf("rank: %v", err))
	}
	return n
}

func pid() string { return strconv.Itoa(os.Getpid()) }

func block(args []string) int {
	WriteReady(args[0], pid())
	return BlockForever()
}

func daemons(args []string) int {
	for _, attr := range []*syscall.SysProcAttr{{Setsid: true}, {Setpgid: true}} {
		c := Command("block", os.DevNull)
		c.SysProcAttr = attr
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if err := Command("orphan").Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	WriteReady(args[0], pid())
	if len(args) > 1 {
		return atoi(args[1])
	}
	return BlockForever()
}

func orphan([]string) int {
	c := Command("block", os.DevNull)
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func escape(args []string) int {
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, 0, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "prctl:", err)
		return 1
	}
	return leaveGroup(args)
}

func leaveGroup(args []string) int {
	child := Command("block", os.DevNull)
	child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := child.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := syscall.Setpgid(0, child.Process.Pid); err != nil {
		fmt.Fprintln(os.Stderr, "setpgid:", err)
		return 1
	}
	WriteReady(args[0], fmt.Sprintf("%d %d", os.Getpid(), child.Process.Pid))
	return BlockForever()
}

func ignore(args []string) int {
	for _, a := range args[1:] {
		signal.Ignore(syscall.Signal(atoi(a)))
	}
	WriteReady(args[0], pid())
	return BlockForever()
}

func exitOnSignal(args []string) int {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM)
	WriteReady(args[0], pid())
	<-c
	return 0
}

func familyMode(args []string) int {
	if err := family(args[0]); err != nil {
		fmt.Fprintln(os.Stderr, "rank: family:", err)
		return 1
	}
	if len(args) > 1 {
		return atoi(args[1])
	}
	return BlockForever()
}

func fail(args []string) int {
	failRank, code, ready, goFifo := args[0], atoi(args[1]), args[2], args[3]
	if err := family(ready); err != nil {
		fmt.Fprintln(os.Stderr, "rank: fail:", err)
		return 1
	}
	if os.Getenv("RANK") != failRank {
		return BlockForever()
	}
	if err := waitByte(goFifo); err != nil {
		fmt.Fprintln(os.Stderr, "rank: fail:", err)
	}
	return code
}

// family starts a child rank that ignores SIGTERM and, once the child has
// said it is ready, writes "PID CHILDPID" to ready. The child is left to
// live on: whoever stops the rank must stop it too.
func family(ready string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	child := Command("ignore", ReadyFD, strconv.Itoa(int(syscall.SIGTERM)))
	child.ExtraFiles = []*os.File{w}
	err = child.Start()
	w.Close()
	if err != nil {
		return err
	}
	// EOF here means the child died before it was ready.
	if _, err := bufio.NewReader(r).ReadString('\n'); err != nil {
		return fmt.Errorf("child %d not ready: %w", child.Process.Pid, err)
	}
	WriteReady(ready, fmt.Sprintf("%d %d", os.Getpid(), child.Process.Pid))
	return nil
}

// waitByte blocks until a byte (or EOF) can be read from the FIFO at path.
func waitByte(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, _ = f.Read(make([]byte, 1))
	return nil
}

func printLines(args []string) int {
	n, size := atoi(args[0]), atoi(args[1])
	tag := os.Getenv("RANK")
	body := strings.Repeat(tag, size)
	for i := range n {
		fmt.Printf("%s %d %s\n", tag, i, body)
	}
	return 0
}

func env([]string) int {
	var lines []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if contractVar(k) {
			lines = append(lines, kv)
		}
	}
	sort.Strings(lines)
	fmt.Println(strings.Join(lines, "\n"))
	return 0
}

// contractVar reports whether k is a variable of the rank contract.
func contractVar(k string) bool {
	switch k {
	case "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
		"ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
		"TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
		"TORCHELASTIC_ERROR_FILE", "OMP_NUM_THREADS":
		return true
	}
	return strings.HasPrefix(k, "MPSPAWN_") || strings.HasPrefix(k, "CUDA_")
}

func errorFile(args []string) int {
	if os.Getenv("RANK") != args[0] {
		return BlockForever()
	}
	msg := fmt.Sprintf(`{"message": {"message": %q, "extraInfo": {"py_callstack": "Traceback (most recent call last):\n  File \"train.py\", line 7, in main\n%s\n", "timestamp": "1700000000"}}}`, args[1], args[1])
	if err := os.WriteFile(os.Getenv("TORCHELASTIC_ERROR_FILE"), []byte(msg), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "rank:", err)
	}
	return 1
}

func affinity([]string) int {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Fprintln(os.Stderr, "rank:", err)
		return 1
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
			fmt.Println(strings.TrimSpace(v))
		}
	}
	return 0
}

// listen is rank 0 of a job that binds its master port, as torch does.
func listen(args []string) int {
	ready, goFifo := args[0], args[1]
	if os.Getenv("RANK") != "0" {
		return 0
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	l, err := lc.Listen(context.Background(), "tcp", "[::]:"+os.Getenv("MASTER_PORT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "rank 0:", err)
		WriteReady(ready, "bind-failed")
		return 1
	}
	defer l.Close()
	WriteReady(ready, os.Getenv("MASTER_PORT"))
	if err := waitByte(goFifo); err != nil {
		fmt.Fprintln(os.Stderr, "rank 0:", err)
		return 1
	}
	return 0
}
