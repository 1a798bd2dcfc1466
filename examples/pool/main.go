// Command pool maps a CPU-bound function over items in a process Pool, with
// a chunksize, prints the results in order and the speed-up over a serial
// loop in this process.
//
//	go run ./examples/pool -items 48 -chunksize 2
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/mpspawn/mpspawn/launcher/mp"
)

// countPrimes counts the primes below n, slowly on purpose.
func countPrimes(n int) int {
	count := 0
	for i := 2; i < n; i++ {
		prime := true
		for d := 2; d*d <= i; d++ {
			if i%d == 0 {
				prime = false
				break
			}
		}
		if prime {
			count++
		}
	}
	return count
}

var primes = mp.Register("primes", func(_ context.Context, _ mp.Rank, n int) (int, error) {
	return countPrimes(n), nil
})

func main() {
	mp.Main()
	nItems := flag.Int("items", 48, "number of items")
	chunksize := flag.Int("chunksize", 2, "items per task")
	workers := flag.Int("workers", runtime.NumCPU(), "worker processes")
	flag.Parse()
	items := make([]int, *nItems)
	for i := range items {
		items[i] = 200_000 + 1_000*i
	}

	start := time.Now()
	serial := make([]int, len(items))
	for i, n := range items {
		serial[i] = countPrimes(n)
	}
	serialTime := time.Since(start)

	pool, err := mp.NewPool(*workers, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer pool.Join()
	defer pool.Close()
	start = time.Now()
	got, err := mp.Map(context.Background(), pool, primes, items, *chunksize)
	poolTime := time.Since(start)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for i, n := range items {
		if got[i] != serial[i] {
			fmt.Fprintf(os.Stderr, "item %d: pool %d, serial %d\n", i, got[i], serial[i])
			os.Exit(1)
		}
		fmt.Printf("primes below %d: %d\n", n, got[i])
	}
	fmt.Printf("serial %v, pool of %d workers (chunksize %d) %v: speed-up %.2fx\n",
		serialTime.Round(time.Millisecond), *workers, *chunksize, poolTime.Round(time.Millisecond), serialTime.Seconds()/poolTime.Seconds())
}
