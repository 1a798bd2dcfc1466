// Command failfast spawns 4 ranks of which rank 1 panics: the other ranks
// are stopped at once, and the program prints the failing rank, its message
// and its own stack (naming the line that panicked), then exits non-zero.
//
//	go run ./examples/failfast
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/mpspawn/mpspawn/launcher/mp"
)

type step struct{ Rank, Of int }

var work = mp.Register("work", func(ctx context.Context, r mp.Rank, steps int) (int, error) {
	if r.Index == 1 {
		var batches []step
		return batches[steps].Of, nil // rank 1 indexes past the end: a panic
	}
	<-ctx.Done() // the others work until the launcher stops them
	return 0, ctx.Err()
})

func main() {
	mp.Main()
	s, err := mp.Spawn(context.Background(), work, 4, 3, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_, err = s.Join()
	var re *mp.RankError
	if !errors.As(err, &re) {
		fmt.Fprintln(os.Stderr, "unexpected:", err)
		os.Exit(1)
	}
	fmt.Printf("rank %d (pid %d) failed: %s\n", re.Rank, re.Pid, re.Message)
	fmt.Printf("panicked: %v, value: %s\n", re.Panicked, re.PanicValue)
	fmt.Printf("its stack:\n%s\n", re.Stack)
	os.Exit(1)
}
