//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// rankMain is the "rank" helper program the CLI tests launch:
//
//	rank env                   print the rank contract, sorted
//	rank exit CODE             exit with CODE
//	rank block FIFO            write "PID" to FIFO, then wait for a signal
//	rank family FIFO           start a child, write "PID CHILDPID" to FIFO, wait
//	rank print N SIZE          print N lines of SIZE bytes tagged with RANK
//	rank fail R CODE FIFO GO   start a child, write "PID CHILDPID" to FIFO;
//	                           rank R then reads a line from GO and exits
//	                           CODE; the others wait
//	rank errorfile R MESSAGE   rank R writes a torch @record error file and
//	                           exits 1; the others wait
//	rank affinity              print the CPUs this process may run on
//	rank listen READY GO       rank 0 listens on MASTER_PORT as torch's
//	                           TCPStore does (SO_REUSEADDR, [::]), writes the
//	                           port to READY, and holds it until it reads a
//	                           byte from GO; other ranks exit 0
func rankMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "rank: no mode")
		return 2
	}
	switch args[0] {
	case "env":
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
	case "exit":
		code, _ := strconv.Atoi(args[1])
		return code
	case "block":
		writeFifo(args[1], strconv.Itoa(os.Getpid()))
		return blockForever()
	case "family":
		return family(args[1], -1, 0, "")
	case "fail":
		r, _ := strconv.Atoi(args[1])
		code, _ := strconv.Atoi(args[2])
		return family(args[3], r, code, args[4])
	case "print":
		n, _ := strconv.Atoi(args[1])
		size, _ := strconv.Atoi(args[2])
		tag := os.Getenv("RANK")
		body := strings.Repeat(tag, size)
		for i := range n {
			fmt.Printf("%s %d %s\n", tag, i, body)
		}
		return 0
	case "errorfile":
		if os.Getenv("RANK") != args[1] {
			return blockForever()
		}
		msg := fmt.Sprintf(`{"message": {"message": %q, "extraInfo": {"py_callstack": "Traceback (most recent call last):\n  File \"train.py\", line 7, in main\n%s\n", "timestamp": "1700000000"}}}`, args[2], args[2])
		if err := os.WriteFile(os.Getenv("TORCHELASTIC_ERROR_FILE"), []byte(msg), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		return 1
	case "listen":
		return listen(args[1], args[2])
	case "affinity":
		data, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
				fmt.Println(strings.TrimSpace(v))
			}
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "rank: unknown mode %q\n", args[0])
	return 2
}

// writeFifo writes one line to a FIFO (or file): the readiness signal.
func writeFifo(path, line string) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Fprintln(f, line)
	f.Close()
}

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

// family starts a child of this rank, reports both pids on fifo, then, if
// this is rank failRank, waits for a line on goFifo and exits code; other
// ranks wait to be stopped.
func family(fifo string, failRank, code int, goFifo string) int {
	child := exec.Command("rank", "block", os.DevNull)
	if err := child.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	writeFifo(fifo, fmt.Sprintf("%d %d", os.Getpid(), child.Process.Pid))
	if os.Getenv("RANK") == strconv.Itoa(failRank) {
		if f, err := os.Open(goFifo); err == nil {
			_, _ = f.Read(make([]byte, 1))
			f.Close()
		}
		return code
	}
	return blockForever()
}

// blockForever parks the rank until a signal ends it. (A bare select{}
// would be reported as a deadlock by the runtime.) pause(2) returns after
// every signal the runtime catches, hence the loop.
func blockForever() int {
	for {
		_ = unix.Pause()
	}
}

// listen is rank 0 of a job that binds its master port, as torch does.
func listen(ready, goFifo string) int {
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
		writeFifo(ready, "bind-failed")
		return 1
	}
	defer l.Close()
	writeFifo(ready, os.Getenv("MASTER_PORT"))
	f, err := os.Open(goFifo)
	if err != nil {
		return 1
	}
	defer f.Close()
	_, _ = f.Read(make([]byte, 1))
	return 0
}
