//go:build linux

package mp

import (
	"context"
	"testing"
)

// BenchmarkSpawn8 spawns 8 no-op Go ranks (processes of the test binary)
// and joins them: torch.multiprocessing.spawn's job, per op.
func BenchmarkSpawn8(b *testing.B) {
	opts := &Options{Stdout: discard{}, Stderr: discard{}}
	for b.Loop() {
		s, err := Spawn(context.Background(), noopFn, 8, struct{}{}, opts)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Join(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPoolMap maps a tiny function (x*x) over 200,000 items with the
// default chunksize on a pool of 2 workers; items/s is reported.
func BenchmarkPoolMap(b *testing.B) {
	p, err := NewPool(2, &Options{Stdout: discard{}, Stderr: discard{}})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Join()
	defer p.Close()
	items := make([]int, 200_000)
	for i := range items {
		items[i] = i
	}
	for b.Loop() {
		if _, err := Map(context.Background(), p, squareFn, items, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(items)*b.N)/b.Elapsed().Seconds(), "items/s")
}
