// Command sharedbuf creates one 512 MiB buffer and fills it once; 8 ranks
// open it read-only and sum it. It prints each rank's sum, then the buffer's
// size and the ranks' total PSS (from /proc/<pid>/smaps_rollup, measured
// while all of them hold the mapping): the ranks share the buffer's pages
// instead of each paying for a copy.
//
//	go run ./examples/sharedbuf
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/launcher/mp"
)

type args struct {
	Buf    ipc.Handle
	Opened ipc.Queue[int] // each rank's pid, once it holds the mapping
	Done   ipc.Queue[int] // rank 0 lets the others go
}

type report struct {
	Sum    uint64
	PSSKiB int // rank 0: the PSS of all ranks together
}

var sum = mp.Register("sum", func(ctx context.Context, r mp.Rank, a args) (report, error) {
	c := ipc.ClientFrom(ctx)
	m, err := c.Open(ctx, a.Buf)
	if err != nil {
		return report{}, err
	}
	defer m.Close(ctx)
	words := unsafe.Slice((*uint64)(unsafe.Pointer(&m.Bytes()[0])), len(m.Bytes())/8)
	var rep report
	for _, w := range words {
		rep.Sum += w & 0xff // the first byte of every word: the buffer holds i%251 at byte i
	}
	if err := a.Opened.Put(ctx, os.Getpid()); err != nil {
		return report{}, err
	}
	if r.Index != 0 {
		_, err := a.Done.Get(ctx) // hold the mapping until rank 0 has measured
		return rep, err
	}
	for range r.WorldSize {
		pid, err := a.Opened.Get(ctx)
		if err != nil {
			return report{}, err
		}
		kib, err := pss(pid)
		if err != nil {
			return report{}, err
		}
		rep.PSSKiB += kib
	}
	for range r.WorldSize - 1 {
		if err := a.Done.Put(ctx, 1); err != nil {
			return report{}, err
		}
	}
	return rep, nil
})

// pss reads a process's proportional set size, in KiB.
func pss(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("no Pss in /proc/%d/smaps_rollup", pid)
}

func main() {
	mp.Main()
	mib := flag.Int("mib", 512, "buffer size in MiB")
	n := flag.Int("n", 8, "ranks")
	flag.Parse()
	broker := ipc.NewBroker()
	defer broker.Close()
	h, err := broker.NewHostBuffer(*mib<<20, func(b []byte) {
		for i := range b {
			b[i] = byte(i % 251)
		}
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	a := args{Buf: h, Opened: ipc.NewQueue[int](0), Done: ipc.NewQueue[int](0)}
	s, err := mp.Spawn(context.Background(), sum, *n, a, &mp.Options{Broker: broker})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	reps, err := s.Join()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := broker.Release(h); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for i, rep := range reps {
		fmt.Printf("rank %d: sum %d\n", i, rep.Sum)
	}
	fmt.Printf("BUFFER_MIB=%d\n", *mib)
	fmt.Printf("PSS_TOTAL_MIB=%d\n", reps[0].PSSKiB/1024)
}
