//go:build linux

package testrank

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// The modes of the launcher's diagnosis tests (see Main).
func init() {
	modes["alloc"] = mode{"MIB", 1, alloc}
	modes["spin"] = mode{"MS", 1, spin}
	modes["stuck"] = mode{"READY", 1, stuck}
}

// alloc allocates MIB mebibytes, touches every page, says so and exits 0.
func alloc(args []string) int {
	buf := make([]byte, atoi(args[0])<<20)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	fmt.Printf("touched %d MiB\n", len(buf)>>20)
	runtime.KeepAlive(buf) // resident until the exit
	return 0
}

// spin burns MS milliseconds of CPU time (this process's) and exits 0.
func spin(args []string) int {
	want := time.Duration(atoi(args[0])) * time.Millisecond
	x := 0
	for {
		for range 1 << 16 {
			x++
		}
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if time.Duration(ts.Nano()) >= want {
			fmt.Println("spun " + strconv.Itoa(x))
			return 0
		}
	}
}

// stuck writes "PID" to READY and waits for a signal in
// stuckInAllreduce, printing nothing: a hung rank whose stack names where.
func stuck(args []string) int {
	WriteReady(args[0], pid())
	return stuckInAllreduce()
}

//go:noinline
func stuckInAllreduce() int {
	return BlockForever()
}
