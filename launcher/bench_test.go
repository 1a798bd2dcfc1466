//go:build linux

package launcher

import (
	"context"
	"os/exec"
	"testing"
)

// BenchmarkStartWait8True starts 8 ranks of /bin/true and waits for them:
// the launcher's whole cost per job (guard, forks from the locked thread,
// waiters, relays, containment, teardown), with each containment, beside
// a shell loop starting the same 8 processes (the floor). Run them
// together, so that machine noise hits all:
//
//	go test -run '^$' -bench StartWait8True -count 10 ./launcher
func BenchmarkStartWait8True(b *testing.B) {
	specs := make([]Spec, 8)
	for i := range specs {
		specs[i] = Spec{Rank: i, LocalRank: i, Path: "/bin/true", Args: []string{"true"}, Stdout: discard{}, Stderr: discard{}}
	}
	for _, cont := range []Containment{ContainCgroup, ContainProcessGroup} {
		b.Run(string(cont), func(b *testing.B) {
			if err := CgroupError(); err != nil && cont == ContainCgroup {
				b.Skip(err)
			}
			for b.Loop() {
				g, err := Start(context.Background(), specs, Options{Containment: cont})
				if err != nil {
					b.Fatal(err)
				}
				if res := g.Wait(); !res.Succeeded() {
					b.Fatalf("result %+v", res)
				}
			}
		})
	}
	b.Run("shell-loop", func(b *testing.B) {
		for b.Loop() {
			if err := exec.Command("/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8; do /bin/true & done; wait").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
