//go:build linux

package mp_test

import (
	"context"
	"fmt"
	"log"

	"github.com/mpspawn/mpspawn/launcher/mp"
)

// square is registered at package level, so that every process of the
// binary (the parent and its ranks) knows it by name.
var square = mp.Register("example.square", func(ctx context.Context, r mp.Rank, x int) (int, error) {
	return x * x, nil
})

// greet runs in each rank of a Spawn.
var greet = mp.Register("example.greet", func(ctx context.Context, r mp.Rank, who string) (string, error) {
	return fmt.Sprintf("rank %d of %d greets %s", r.Index, r.WorldSize, who), nil
})

// Spawn runs a registered function in N rank processes and returns their
// results in rank order. The binary's main calls mp.Main first thing (here
// the test binary's TestMain does).
func ExampleSpawn() {
	s, err := mp.Spawn(context.Background(), greet, 2, "the world", nil)
	if err != nil {
		log.Fatal(err)
	}
	out, err := s.Join()
	if err != nil {
		log.Fatal(err) // a *mp.RankError: the failed rank's own error and stack
	}
	for _, line := range out {
		fmt.Println(line)
	}
	// Output:
	// rank 0 of 2 greets the world
	// rank 1 of 2 greets the world
}

// A Pool runs a registered function over items in worker processes, like
// Python's multiprocessing.Pool.
func ExampleMap() {
	p, err := mp.NewPool(2, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer p.Join()
	defer p.Close()
	squares, err := mp.Map(context.Background(), p, square, []int{1, 2, 3, 4}, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(squares)
	// Output: [1 4 9 16]
}
