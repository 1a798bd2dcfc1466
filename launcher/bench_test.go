//go:build linux

package launcher

import (
	"context"
	"testing"
)

// BenchmarkStartWait8True starts 8 ranks of /bin/true and waits for them:
// the launcher's whole cost per job (guard, forks from the locked thread,
// waiters, relays, teardown).
func BenchmarkStartWait8True(b *testing.B) {
	specs := make([]Spec, 8)
	for i := range specs {
		specs[i] = Spec{Rank: i, LocalRank: i, Path: "/bin/true", Args: []string{"true"}, Stdout: discard{}, Stderr: discard{}}
	}
	for b.Loop() {
		g, err := Start(context.Background(), specs, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if res := g.Wait(); !res.Succeeded() {
			b.Fatalf("result %+v", res)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
