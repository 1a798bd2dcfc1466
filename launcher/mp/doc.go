// Package mp is torch.multiprocessing for Go: it runs registered Go
// functions in rank processes of the same binary and brings back their
// results in rank order, or the failing rank's own error, panic value and
// stack; a Pool of worker processes maps functions over items, like
// Python's multiprocessing.Pool. Ranks share buffers and queues through the
// launcher's broker (package ipc: ipc.ClientFrom(ctx) in a function).
//
// A complete program:
//
//	package main
//
//	import (
//		"context"
//		"fmt"
//		"os"
//
//		"github.com/mpspawn/mpspawn/launcher/mp"
//	)
//
//	// Functions are registered at package level, so that every process of
//	// the binary knows them by name.
//	var square = mp.Register("square", func(ctx context.Context, r mp.Rank, x int) (int, error) {
//		return x * x, nil
//	})
//
//	var hello = mp.Register("hello", func(ctx context.Context, r mp.Rank, greeting string) (string, error) {
//		return fmt.Sprintf("%s from rank %d of %d", greeting, r.Index, r.WorldSize), nil
//	})
//
//	func main() {
//		mp.Main() // first thing: a rank runs its function here and exits
//
//		ctx := context.Background()
//		s, err := mp.Spawn(ctx, hello, 4, "hello", nil)
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		lines, err := s.Join() // ordered by rank; or the first failure, a *mp.RankError
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		fmt.Println(lines)
//
//		pool, err := mp.NewPool(0, nil) // one worker per CPU
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		defer pool.Join()
//		defer pool.Close()
//		squares, err := mp.Map(ctx, pool, square, []int{1, 2, 3, 4}, 0)
//		fmt.Println(squares, err) // [1 4 9 16] <nil>
//	}
//
// A rank is a fresh process of the binary (/proc/self/exe: the file the
// parent was started from, even if it has since been replaced on disk),
// which finds its function by name: Go cannot send a closure to another
// process. Main must therefore run first thing in main, after every
// Register; a binary that forgets it would start ranks that start ranks,
// so Spawn and NewPool called in a rank that did not run Main fail with
// ErrInsideRank, which says so.
//
// Arguments and results travel encoded with encoding/gob, so their types
// need exported fields (or a GobEncoder); interface values must be
// gob.Register'ed. Slices of plain data travel as raw bytes.
//
// Ranks get the same supervision as the CLI's (package launcher): the first
// failure stops the others, cancelling ctx stops them all, and none
// outlives the parent, even a parent killed with SIGKILL. Each rank's
// environment is the launcher's rank contract; Options.Ranks places ranks
// on GPUs and CPUs, and gpu.PlanHere's result goes there as it is.
package mp
