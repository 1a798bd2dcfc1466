//go:build linux

package mp

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/ipc"
)

// bigQueue carries values of almost 1 MB, which travel inline (below
// ipc.InlineMax) and so are batched by a fast producer.
var bigQueue = ipc.Queue[[]byte]{ID: 4242}

type loadArgs struct{ Producers, Each int }

// loadFn: rank 0 takes every value and returns how many bytes it got;
// the others put Each values of almost 1 MB as fast as they can.
var loadFn = Register("test.ipcload", func(ctx context.Context, r Rank, a loadArgs) (int, error) {
	if r.Index > 0 {
		v := make([]byte, ipc.InlineMax-64)
		for range a.Each {
			if err := bigQueue.Put(ctx, v); err != nil {
				return 0, err
			}
		}
		return 0, ipc.ClientFrom(ctx).Flush()
	}
	got := 0
	for range a.Producers * a.Each {
		v, err := bigQueue.Get(ctx)
		if err != nil {
			return got, err
		}
		got += len(v)
	}
	return got, nil
})

// TestQueueManyLargePuts: producers putting hundreds of ~1 MB values on an
// unbounded queue, as fast as they can, all get through: their batches
// stay below the frame limit (one batch of 108 MB used to kill the
// channel without a word).
func TestQueueManyLargePuts(t *testing.T) {
	for _, a := range []loadArgs{{1, 400}, {4, 100}} {
		t.Run(fmt.Sprintf("%d producers", a.Producers), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			s, err := Spawn(ctx, loadFn, 1+a.Producers, a, &Options{Stdout: discard{}, Stderr: discard{}})
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Join()
			if want := a.Producers * a.Each * (ipc.InlineMax - 64); err != nil || got[0] != want {
				t.Fatalf("consumer got %v bytes, %v; want %d", got, err, want)
			}
		})
	}
}
