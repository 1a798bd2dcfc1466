// Command gobench is the Go side of bench/goapi.py: it times the Go API on
// the jobs the script also gives Python's multiprocessing, and prints one
// number per line for the script to read.
//
//	gobench spawn REPS        seconds to spawn and join 8 no-op ranks, per rep
//	gobench shell REPS [PROG] seconds for sh to start 8 processes of gobench nop
//	                          (or of PROG) and wait for them, per rep: the anchor
//	                          for spawn (with PROG, a floor under it)
//	gobench nop               nothing: the binary's own start and exit
//	gobench queue N           messages per second through an ipc.Queue, rank 0 → rank 1
//	gobench handoff N         64 MiB float32 buffers per second handed from rank 0 to rank 1,
//	                          taken from an ipc.BufferPool (buffers come back once read)
//	gobench handoff-fresh N   the same with a new buffer (fresh memory) each time
//	gobench map ITEMS WORKERS items per second of Pool.Map(x*x), default chunksize:
//	                          the median of 5 maps after a warm-up map
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/mpspawn/mpspawn/internal/f32"
	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/launcher/mp"
)

// ipcArgs tells the two ranks of an ipc benchmark what to do.
type ipcArgs struct {
	Mode string
	N    int
	Ints ipc.Queue[int]
	Bufs ipc.Queue[ipc.Handle]
}

var (
	ipcRank = mp.Register("ipc", func(ctx context.Context, r mp.Rank, a ipcArgs) (float64, error) {
		c := ipc.ClientFrom(ctx)
		if r.Index == 0 {
			return 0, produce(ctx, c, a)
		}
		return consume(ctx, c, a)
	})
	noop = mp.Register("noop", func(context.Context, mp.Rank, int) (int, error) { return 0, nil })
	sq   = mp.Register("square", func(_ context.Context, _ mp.Rank, x int) (int, error) { return x * x, nil })
)

func main() {
	mp.Main()
	if len(os.Args) == 2 && os.Args[1] == "nop" {
		return
	}
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gobench spawn|shell REPS | gobench map ITEMS WORKERS | gobench nop")
		os.Exit(2)
	}
	n, _ := strconv.Atoi(os.Args[2])
	var err error
	switch os.Args[1] {
	case "spawn":
		err = spawn(n)
	case "shell":
		err = shell(n, os.Args[3:])
	case "queue", "handoff", "handoff-fresh":
		err = ipcBench(os.Args[1], n)
	case "map":
		workers, _ := strconv.Atoi(os.Args[3])
		err = mapItems(n, workers)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func spawn(reps int) error {
	for range reps {
		start := time.Now()
		s, err := mp.Spawn(context.Background(), noop, 8, 0, nil)
		if err != nil {
			return err
		}
		if _, err := s.Join(); err != nil {
			return err
		}
		fmt.Println(time.Since(start).Seconds())
	}
	return nil
}

// shellLoop starts 8 processes of the program named by $0 in the
// background and waits for them, as a shell user would.
const shellLoop = `for i in 1 2 3 4 5 6 7 8; do "$0" nop & done; wait`

// shell times sh running shellLoop with this binary: 8 processes of the
// ranks' own binary doing nothing, so that the binary's start (runtime and
// package init) is in the anchor as it is in the ranks. With prog, the loop
// runs prog instead (an empty Go program, /bin/true): what starting any
// process, or any Go process, costs on the machine.
func shell(reps int, prog []string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if len(prog) > 0 {
		exe = prog[0]
	}
	for range reps {
		cmd := exec.Command("/bin/sh", "-c", shellLoop, exe)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return err
		}
		fmt.Println(time.Since(start).Seconds())
	}
	return nil
}

// maps is the number of timed maps per run; their median is printed.
const maps = 5

func mapItems(n, workers int) error {
	p, err := mp.NewPool(workers, nil)
	if err != nil {
		return err
	}
	defer p.Join()
	defer p.Close()
	items := make([]int, n)
	for i := range items {
		items[i] = i
	}
	if _, err := mp.Map(context.Background(), p, sq, items, 0); err != nil { // warm-up, as on the Python side
		return err
	}
	var rates []float64
	for range maps {
		start := time.Now()
		got, err := mp.Map(context.Background(), p, sq, items, 0)
		if err != nil {
			return err
		}
		rates = append(rates, float64(n)/time.Since(start).Seconds())
		if got[n-1] != (n-1)*(n-1) {
			return fmt.Errorf("wrong result %d", got[n-1])
		}
	}
	slices.Sort(rates)
	fmt.Println(rates[len(rates)/2])
	return nil
}

// ipcBench runs the two ranks and prints the consumer's rate, timed from
// its first message to its last (as bench/ipc.py times Python's).
func ipcBench(mode string, n int) error {
	args := ipcArgs{Mode: mode, N: n, Ints: ipc.NewQueue[int](0), Bufs: ipc.NewQueue[ipc.Handle](0)}
	s, err := mp.Spawn(context.Background(), ipcRank, 2, args, nil)
	if err != nil {
		return err
	}
	res, err := s.Join()
	if err != nil {
		return err
	}
	fmt.Println(res[1])
	return nil
}

// handoffPool is how many 64 MiB buffers the producer's pool lets out at
// once: one being filled, one being read, one on its way back.
const handoffPool = 3

func produce(ctx context.Context, c *ipc.Client, a ipcArgs) error {
	newBuffer := func(context.Context) (*ipc.Buffer, error) { return c.NewBuffer(64 << 20) }
	if a.Mode == "handoff" {
		pool, err := c.NewBufferPool(64<<20, handoffPool)
		if err != nil {
			return err
		}
		defer pool.Close()
		newBuffer = pool.Get
	}
	for i := range a.N {
		if a.Mode == "queue" {
			if err := a.Ints.Put(ctx, i); err != nil {
				return err
			}
			continue
		}
		buf, err := newBuffer(ctx)
		if err != nil {
			return err
		}
		f32.Fill(f32.Of(buf.Bytes()), float32(i))
		h, err := buf.Publish(ctx)
		if err != nil {
			return err
		}
		if err := a.Bufs.Put(ctx, h); err != nil {
			return err
		}
		if err := buf.Close(ctx); err != nil {
			return err
		}
	}
	return c.Flush()
}

func consume(ctx context.Context, c *ipc.Client, a ipcArgs) (float64, error) {
	var start time.Time
	if a.Mode == "queue" { // GetBatch: one broker round trip for what is waiting
		for i := 0; i < a.N; {
			vs, err := a.Ints.GetBatch(ctx, 4096)
			if err != nil {
				return 0, err
			}
			if i == 0 {
				start = time.Now()
			}
			for _, v := range vs {
				if v != i {
					return 0, fmt.Errorf("got %d; want %d", v, i)
				}
				i++
			}
		}
		return float64(a.N-1) / time.Since(start).Seconds(), nil
	}
	for i := range a.N {
		if i == 1 {
			start = time.Now()
		}
		h, err := a.Bufs.Get(ctx)
		if err != nil {
			return 0, err
		}
		m, err := c.Open(ctx, h)
		if err != nil {
			return 0, err
		}
		fs := f32.Of(m.Bytes())
		if fs[len(fs)-1] != float32(i) || i > 0 && f32.Sum(fs) <= 0 {
			return 0, fmt.Errorf("buffer %d holds %v", i, fs[0])
		}
		if err := m.Close(ctx); err != nil {
			return 0, err
		}
	}
	return float64(a.N-1) / time.Since(start).Seconds(), nil
}
