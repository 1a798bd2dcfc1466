// Command spawn is torch.multiprocessing.spawn for Go: it runs a registered
// function in N rank processes of this binary and prints one line per rank,
// in rank order.
//
//	go run ./examples/spawn -n 4
//	go run ./examples/spawn -n 2 -place   # with each rank's GPUs and CPUs
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/mpspawn/mpspawn/launcher/mp"
)

// hello runs in each rank. Go cannot ship a closure to another process, so
// the function is registered by name, at package level, in every process of
// the binary.
var hello = mp.Register("hello", func(ctx context.Context, r mp.Rank, greeting string) (string, error) {
	line := fmt.Sprintf("%s from rank %d of world size %d, pid %d", greeting, r.Index, r.WorldSize, os.Getpid())
	if r.CPUs != nil || r.GPUs != nil {
		line += fmt.Sprintf(", cpus %v, gpus %v", r.CPUs, r.GPUs)
	}
	return line, nil
})

func main() {
	mp.Main() // a rank runs its function here and exits
	n := flag.Int("n", 4, "number of ranks")
	place := flag.Bool("place", false, "give each rank its GPUs and CPUs, as the mpspawn CLI does")
	flag.Parse()
	opts := &mp.Options{}
	if *place {
		ranks, notes, err := gpu.PlanHere(gpu.PlanOptions{NProc: *n}, gpu.VisibilityLocalRank)
		for _, note := range notes {
			fmt.Fprintln(os.Stderr, note)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		opts.Ranks = ranks
	}
	s, err := mp.Spawn(context.Background(), hello, *n, "hello", opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lines, err := s.Join()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, l := range lines {
		fmt.Println(l)
	}
}
