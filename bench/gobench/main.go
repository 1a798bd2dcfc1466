// Command gobench is the Go side of bench/goapi.py: it times the Go API on
// the jobs the script also gives Python's multiprocessing, and prints one
// number per line for the script to read.
//
//	gobench spawn REPS        seconds to spawn and join 8 no-op ranks, per rep
//	gobench map ITEMS WORKERS items per second of Pool.Map(x*x), default chunksize:
//	                          the median of 5 maps after a warm-up map
package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
)

var (
	noop = launcher.Register("noop", func(context.Context, launcher.Rank, int) (int, error) { return 0, nil })
	sq   = launcher.Register("square", func(_ context.Context, _ launcher.Rank, x int) (int, error) { return x * x, nil })
)

func main() {
	launcher.Main()
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gobench spawn REPS | gobench map ITEMS WORKERS")
		os.Exit(2)
	}
	n, _ := strconv.Atoi(os.Args[2])
	var err error
	switch os.Args[1] {
	case "spawn":
		err = spawn(n)
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
		s, err := launcher.Spawn(context.Background(), noop, 8, 0, nil)
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

// maps is the number of timed maps per run; their median is printed.
const maps = 5

func mapItems(n, workers int) error {
	p, err := launcher.NewPool(workers, nil)
	if err != nil {
		return err
	}
	defer p.Join()
	defer p.Close()
	items := make([]int, n)
	for i := range items {
		items[i] = i
	}
	if _, err := launcher.Map(context.Background(), p, sq, items, 0); err != nil { // warm-up, as on the Python side
		return err
	}
	var rates []float64
	for range maps {
		start := time.Now()
		got, err := launcher.Map(context.Background(), p, sq, items, 0)
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
