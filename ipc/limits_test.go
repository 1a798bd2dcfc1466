//go:build linux

package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
)

// testLimits are small limits, so that a rank reaches each quickly.
var testLimits = Limits{Handles: 6, FDs: 4, Pending: 8, Queues: 5, QueuedBytes: 64 << 10}

// limitRank is the rank of TestLimits: it reaches the limit named by
// args[0] (as testLimits set it), prints "limit: ERROR" for the refusal,
// makes room, prints "after: ok" once the same request succeeds again,
// and exits.
func limitRank(args []string) int {
	c, err := ClientFromEnv(0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(WithClient(context.Background(), c), time.Minute)
	defer cancel()
	var refused, after error
	switch args[0] {
	case "pending":
		refused, after = reachPending(ctx)
	case "handles", "fds":
		refused, after = reachHandles(ctx, c, args[0] == "fds")
	case "queues":
		refused, after = reachQueues(ctx)
	case "queued":
		refused, after = reachQueued(ctx)
	default:
		fmt.Fprintln(os.Stderr, "limits: unknown limit", args[0])
		return 2
	}
	fmt.Printf("limit: %v %v\n", errors.Is(refused, ErrLimit), refused)
	fmt.Printf("after: %v\n", after)
	c.Close(ctx, 0)
	return 0
}

// reachPending waits Pending+1 times at once on an empty queue: one of
// the Gets is refused. Once the others are cancelled, a Get is answered
// again.
func reachPending(ctx context.Context) (refused, after error) {
	wctx, stop := context.WithCancel(ctx)
	errs := make(chan error, testLimits.Pending+1)
	var wg sync.WaitGroup
	for range testLimits.Pending + 1 {
		wg.Go(func() {
			_, err := Queue[int]{ID: 100}.Get(wctx)
			errs <- err
		})
	}
	refused = <-errs // the others wait
	stop()
	wg.Wait()
	q := Queue[int]{ID: 99, Capacity: 1}
	if err := q.Put(ctx, 7); err != nil {
		return refused, err
	}
	if _, err := q.Get(ctx); err != nil {
		return refused, err
	}
	return refused, q.TaskDone(ctx)
}

// reachHandles publishes until a publish is refused, releases one handle
// and publishes again: host buffers for the fd limit (4), blobs (no
// descriptor) for the handle limit (6).
func reachHandles(ctx context.Context, c *Client, fds bool) (refused, after error) {
	var hs []Handle
	publish := func() error {
		if !fds {
			h, err := c.PublishBlob(ctx, []byte("blob"))
			if err == nil {
				hs = append(hs, h)
			}
			return err
		}
		b, err := c.NewBuffer(4096)
		if err != nil {
			return err
		}
		defer b.free()
		h, err := b.Publish(ctx)
		if err == nil {
			hs = append(hs, h)
		}
		return err
	}
	for refused == nil {
		refused = publish()
	}
	if err := c.Release(ctx, hs[0]); err != nil {
		return refused, err
	}
	after = publish()
	c.mu.Lock()
	c.published = nil // released here: Close need not wait for holders
	c.mu.Unlock()
	for _, h := range hs[1:] {
		if err := c.Release(ctx, h); err != nil && after == nil {
			after = err
		}
	}
	return refused, after
}

// reachQueues fills Queues+1 bounded queues (a value each keeps a queue in
// being): the last Put is refused. Once one queue is emptied and its value
// marked done, that queue is gone, and a new one can be made.
func reachQueues(ctx context.Context) (refused, after error) {
	for i := range testLimits.Queues + 1 {
		if refused = (Queue[int]{ID: uint64(200 + i), Capacity: 1}).Put(ctx, i); refused != nil {
			break
		}
	}
	q := Queue[int]{ID: 200, Capacity: 1}
	if _, err := q.Get(ctx); err != nil {
		return refused, err
	}
	if err := q.TaskDone(ctx); err != nil {
		return refused, err
	}
	return refused, (Queue[int]{ID: 300, Capacity: 1}).Put(ctx, 1)
}

// reachQueued puts 10 kB values on a queue nobody reads until a Put is
// refused; once it takes one back, a Put succeeds again.
func reachQueued(ctx context.Context) (refused, after error) {
	q := Queue[[10000]byte]{ID: 400, Capacity: 1000}
	for i := 0; refused == nil && i < 100; i++ {
		refused = q.Put(ctx, [10000]byte{})
	}
	if _, err := q.Get(ctx); err != nil {
		return refused, err
	}
	return refused, q.Put(ctx, [10000]byte{})
}

// free unmaps a buffer without releasing its handle.
func (b *Buffer) free() {
	if b.m != nil {
		b.m.free()
		b.m = nil
	}
}

// TestLimits: a rank that reaches one of its limits gets ErrLimit naming
// it, and its channel stays usable; an honest rank on the same broker
// carries on meanwhile and after; once the rank has exited, nothing of
// it waits on in the broker, and no handle it held.
func TestLimits(t *testing.T) {
	for _, tc := range []struct{ limit, want string }{
		{"pending", "8 requests wait already (limit 8; raise it with ipc.WithLimits or MPSPAWN_IPC_MAX_PENDING)"},
		{"handles", "holds too many handles to publish more (limit 6; raise it with ipc.WithLimits or MPSPAWN_IPC_MAX_HANDLES)"},
		{"fds", "the launcher keeps 4 descriptors for its buffers (limit 4; raise it with ipc.WithLimits or MPSPAWN_IPC_MAX_FDS)"},
		{"queues", "5 queues it created exist (limit 5; raise it with ipc.WithLimits or MPSPAWN_IPC_MAX_QUEUES)"},
		{"queued", "bytes it put wait in queues (limit 65536; raise it with ipc.WithLimits or MPSPAWN_IPC_MAX_QUEUED_BYTES)"},
	} {
		t.Run(tc.limit, func(t *testing.T) {
			b := NewBroker(WithLimits(testLimits))
			defer b.Close()
			honest, endHonest := serveHere(t, b, 1)
			defer endHonest()
			hctx, cancel := context.WithTimeout(WithClient(context.Background(), honest), time.Minute)
			defer cancel()
			shared := Queue[string]{ID: 1, Capacity: 4}
			if err := shared.Put(hctx, "before"); err != nil {
				t.Fatal(err)
			}

			lines, served := runRank(t, b, 0, "limits", tc.limit)
			if len(lines) != 2 || !strings.HasPrefix(lines[0], "limit: true ipc: limit reached: rank 0: ") || !strings.HasSuffix(lines[0], tc.want) || lines[1] != "after: <nil>" {
				t.Errorf("rank printed %q; want the refusal naming %q, then success", lines, tc.want)
			}
			if err := <-served; err != nil {
				t.Errorf("Serve() = %v; want nil: a limit does not end the channel", err)
			}
			if v, err := shared.Get(hctx); err != nil || v != "before" {
				t.Errorf("honest Get() = %q, %v; want %q", v, err, "before")
			}
			honest.Close(hctx, 0)
			b.mu.Lock()
			defer b.mu.Unlock()
			if len(b.handles) != 0 {
				t.Errorf("after the rank exited: %d handles left; want none", len(b.handles))
			}
			for id, q := range b.queues {
				if len(q.getters)+len(q.putters)+len(q.joiners) != 0 {
					t.Errorf("after the rank exited: queue %d has %d gets, %d puts and %d joins waiting; want none", id, len(q.getters), len(q.putters), len(q.joiners))
				}
			}
		})
	}
}

// runRank runs the test binary as rank with args, its control channel
// served by b (Serve, as the launcher does), and returns the lines it
// printed once it has exited, and Serve's outcome to come.
func runRank(t *testing.T, b *Broker, rank int, args ...string) ([]string, <-chan error) {
	t.Helper()
	cmd := testrank.Command(args...)
	parent, out := startOnChannel(t, cmd)
	served := make(chan error, 1)
	go func() { served <- b.Serve(rank, parent, cmd.Process.Pid, nil) }()
	timer := time.AfterFunc(time.Minute, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	var lines []string
	for sc := bufio.NewScanner(out); sc.Scan(); {
		lines = append(lines, sc.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("rank %s: %v (killed after a minute: a call hung?)", strings.Join(args, " "), err)
	}
	return lines, served
}

// serveHere attaches a client in this process to b as rank, served by
// Serve; end closes both ends and waits for Serve.
func serveHere(t *testing.T, b *Broker, rank int) (c *Client, end func()) {
	t.Helper()
	conn, end := serveConn(t, b, rank)
	return NewClient(conn, rank), end
}

func TestLimitsFromEnv(t *testing.T) {
	def := DefaultLimits()
	for _, tc := range []struct {
		env     map[string]string
		want    Limits
		wantErr string
	}{
		{nil, def, ""},
		{map[string]string{EnvMaxPending: "10000", EnvFrameTimeout: "2m"}, Limits{Handles: def.Handles, FDs: def.FDs, Pending: 10000, Queues: def.Queues, QueuedBytes: def.QueuedBytes,
			TotalFDs: def.TotalFDs, TotalQueuedBytes: def.TotalQueuedBytes, FrameTimeout: 2 * time.Minute}, ""},
		{map[string]string{EnvMaxHandles: "0"}, Limits{}, `ipc: MPSPAWN_IPC_MAX_HANDLES="0": want a positive integer`},
		{map[string]string{EnvMaxQueues: "1e3"}, Limits{}, `ipc: MPSPAWN_IPC_MAX_QUEUES="1e3": want a positive integer`},
		{map[string]string{EnvFrameTimeout: "30"}, Limits{}, `ipc: MPSPAWN_IPC_FRAME_TIMEOUT="30": want a positive duration, such as 1m`},
	} {
		got, err := LimitsFromEnv(func(k string) string { return tc.env[k] })
		if tc.wantErr != "" {
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("LimitsFromEnv(%v) = %v; want error %q", tc.env, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("LimitsFromEnv(%v) = %+v, %v; want %+v", tc.env, got, err, tc.want)
		}
	}
}
