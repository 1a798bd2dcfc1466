// Command spawn is torch.multiprocessing.spawn for Go: it runs a registered
// function in N rank processes of this binary and prints one line per rank,
// in rank order.
//
//	go run ./examples/spawn -n 4
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/mpspawn/mpspawn/launcher"
)

// hello runs in each rank. Go cannot ship a closure to another process, so
// the function is registered by name, at package level, in every process of
// the binary.
var hello = launcher.Register("hello", func(ctx context.Context, r launcher.Rank, greeting string) (string, error) {
	return fmt.Sprintf("%s from rank %d of world size %d, pid %d", greeting, r.Index, r.WorldSize, os.Getpid()), nil
})

func main() {
	launcher.Main() // a rank runs its function here and exits
	n := flag.Int("n", 4, "number of ranks")
	flag.Parse()
	s, err := launcher.Spawn(context.Background(), hello, *n, "hello", nil)
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
