//go:build linux

package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// syncBuffer is a Notes writer the test reads while nodes write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testNode is one node of a test's etcd rendezvous.
type testNode struct {
	*Rendezvous
	notes *syncBuffer
}

func newNode(t *testing.T, srv *etcdtest.Server, runID, addr string, nproc, minN, maxN int, tune func(*Config)) *testNode {
	t.Helper()
	notes := &syncBuffer{}
	cfg := Config{
		Endpoints: []string{srv.Endpoint}, RunID: runID, MinNodes: minN, MaxNodes: maxN, NProc: nproc,
		LocalAddr: addr, Host: "host-" + addr, JoinTimeout: 20 * time.Second, LastCallTimeout: 200 * time.Millisecond,
		CloseTimeout: 10 * time.Second, ConnectTimeout: 5 * time.Second, LeaseTTL: time.Second, Notes: notes,
	}
	if tune != nil {
		tune(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", addr, err)
	}
	t.Cleanup(func() { e.Close() })
	return &testNode{e, notes}
}

// nextAll calls Next on every node at once and returns their rounds.
func nextAll(t *testing.T, nodes ...*testNode) []rendezvous.Round {
	t.Helper()
	rounds := make([]rendezvous.Round, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rounds[i], errs[i] = n.Next(ctx)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Next: %v", err)
	}
	return rounds
}

// TestEtcdRound: nodes of different sizes get ranks as prefix sums, node 0's
// address and reserved port as master, the same on every node, and the
// same node ranks in the next round.
func TestEtcdRound(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "job", "127.0.0.2", 3, 2, 2, nil)
	b := newNode(t, srv, "job", "127.0.0.3", 1, 2, 2, nil)
	rs := nextAll(t, a, b)
	want := []rendezvous.Membership{
		{NNodes: 2, NodeRank: 0, NProcPerNode: 3, WorldSize: 4, FirstRank: 0, MasterAddr: "127.0.0.2", MasterPort: a.Self().Port},
		{NNodes: 2, NodeRank: 1, NProcPerNode: 1, WorldSize: 4, FirstRank: 3, MasterAddr: "127.0.0.2", MasterPort: a.Self().Port},
	}
	for i, r := range rs {
		if r.Membership != want[i] || r.Restart != 0 || r.Number != 0 {
			t.Errorf("node %d: round %+v; want %+v, restart 0, number 0", i, r, want[i])
		}
	}
	if got := b.Membership(rs[1]).Rank(0); got != 3 {
		t.Errorf("node 1 Rank(0) = %d; want 3", got)
	}
	for _, n := range []*testNode{a, b} {
		if !strings.Contains(n.notes.String(), "mpspawn: rendezvous job: ") || !strings.Contains(n.notes.String(), "/2 nodes (") {
			t.Errorf("notes of %s = %q; want a status line", n.self.Addr, n.notes.String())
		}
	}
	// A failure on node 1 reaches node 0 with its detail; the next round
	// keeps the node ranks and counts one restart on both nodes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := rendezvous.Failure{Rank: 3, LocalRank: 0, Pid: 42, ExitCode: 3, Message: "boom", Time: time.Now()}
	if got, err := b.Fail(ctx, f); err != nil || got.Rank != 3 || got.NodeRank != 1 {
		t.Fatalf("Fail = %+v, %v; want itself, node rank 1", got, err)
	}
	select {
	case s := <-a.Stopped():
		if s.Failure == nil || s.Failure.Rank != 3 || s.Failure.ExitCode != 3 || s.Failure.Host != "host-127.0.0.3" || s.Failure.Message != "boom" {
			t.Errorf("node 0 stop = %+v; want node 1's failure", s)
		}
	case <-ctx.Done():
		t.Fatal("node 0 was not told of node 1's failure")
	}
	rs = nextAll(t, a, b)
	for i, r := range rs {
		if r.NodeRank != i || r.Restart != 1 || r.Number != 1 {
			t.Errorf("node %d after a failure: %+v; want node rank %d, restart 1, number 1", i, r, i)
		}
	}
	// Both finish: the run closes, and a late node is told so at once.
	var wg sync.WaitGroup
	for _, n := range []*testNode{a, b} {
		wg.Go(func() {
			if s, err := n.Finish(ctx); s != nil || err != nil {
				t.Errorf("Finish = %+v, %v; want nil, nil", s, err)
			}
		})
	}
	wg.Wait()
	if err := a.End(ctx, "succeeded"); err != nil {
		t.Fatal(err)
	}
	late := newNode(t, srv, "job", "127.0.0.4", 1, 2, 2, nil)
	_, err := late.Next(ctx)
	var ce *ClosedError
	if !errors.As(err, &ce) || !errors.Is(err, rendezvous.ErrClosed) || ce.Status != "succeeded" {
		t.Errorf("late node Next = %v; want a ClosedError (succeeded)", err)
	}
}

// Membership is r's membership (a helper for readability).
func (e *Rendezvous) Membership(r rendezvous.Round) rendezvous.Membership { return r.Membership }

// TestEtcdWatchCompacted: a round watch that resumes (after etcd went
// away) at a revision etcd has since compacted reads the keys again rather
// than retrying the lost history for ever: a failure published in the gap
// still stops the node.
func TestEtcdWatchCompacted(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "job", "127.0.0.2", 1, 2, 2, nil)
	b := newNode(t, srv, "job", "127.0.0.3", 1, 2, 2, nil)
	rs := nextAll(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a.stopWatch() // node 0 is cut off from here on...
	before, err := a.cli.Get(ctx, a.prefix, gateway.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Fail(ctx, rendezvous.Failure{Rank: 1, ExitCode: 7, Message: "in the gap", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// A write elsewhere, so that compacting at its revision removes the
	// failure's own revisions from the history.
	after, err := a.cli.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cli.Compact(ctx, after.Header.Revision); err != nil {
		t.Fatal(err)
	}
	// ...and resumes where it was, in history etcd no longer has.
	a.cur = a.watchRoundFrom(rs[0], before.Header.Revision+1)
	select {
	case s := <-a.Stopped():
		if s.Failure == nil || s.Failure.ExitCode != 7 || s.Failure.Message != "in the gap" {
			t.Errorf("node 0 stop = %+v; want node 1's failure", s)
		}
	case <-ctx.Done():
		t.Fatal("node 0 was not told of the failure published while its watch was away and compacted")
	}
}

// TestEtcdTwoRuns: two jobs with different run ids on one etcd, same
// addresses, never see each other.
func TestEtcdTwoRuns(t *testing.T) {
	srv := etcdtest.Start(t)
	var nodes []*testNode
	for _, run := range []string{"one", "two"} {
		for _, addr := range []string{"127.0.0.2", "127.0.0.3"} {
			nodes = append(nodes, newNode(t, srv, run, addr, 2, 2, 2, nil))
		}
	}
	rs := nextAll(t, nodes...)
	for i, r := range rs {
		if r.NNodes != 2 || r.WorldSize != 4 || r.NodeRank != i%2 {
			t.Errorf("node %d: %+v; want 2 nodes, world 4, node rank %d", i, r.Membership, i%2)
		}
	}
	if rs[0].MasterPort == rs[2].MasterPort {
		t.Errorf("both runs got master port %d", rs[0].MasterPort)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nodes[1].Fail(ctx, rendezvous.Failure{Rank: 2, ExitCode: 1}); err != nil {
		t.Fatal(err)
	}
	<-nodes[0].Stopped()
	select {
	case s := <-nodes[2].Stopped():
		t.Errorf("run two got run one's stop %+v", s)
	default:
	}
}

// TestEtcdJoinTimeout: a round that never gathers its nodes ends with a
// JoinTimeoutError naming who joined.
func TestEtcdJoinTimeout(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "job", "127.0.0.2", 1, 2, 2, func(c *Config) { c.JoinTimeout = 300 * time.Millisecond })
	_, err := a.Next(context.Background())
	var je *JoinTimeoutError
	if !errors.As(err, &je) || len(je.Joined) != 1 || je.Joined[0] != "127.0.0.2" || je.MinNodes != 2 {
		t.Fatalf("Next = %v; want a JoinTimeoutError with 127.0.0.2 joined", err)
	}
}

// TestEtcdLostNode: a node whose lease goes without it finishing is a
// lost node: the others stop with its failure.
func TestEtcdLostNode(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "job", "127.0.0.2", 1, 2, 2, nil)
	b := newNode(t, srv, "job", "127.0.0.3", 1, 2, 2, nil)
	nextAll(t, a, b)
	b.Close() // revokes its lease, as its expiry would
	select {
	case s := <-a.Stopped():
		if s.Failure == nil || !s.Failure.Lost || s.Failure.NodeRank != 1 || s.Failure.Addr != "127.0.0.3" || s.Failure.ExitCode != rendezvous.LostExitCode {
			t.Errorf("stop = %+v; want node 1 lost", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("node 0 did not see node 1 go")
	}
}

// TestEtcdElastic: with 1:3 nodes a round starts last_call_timeout after
// the first node; a node that arrives later stops the round, and the next
// one takes it in without spending a restart.
func TestEtcdElastic(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "job", "127.0.0.2", 1, 1, 3, nil)
	r := nextAll(t, a)[0]
	if r.NNodes != 1 || r.WorldSize != 1 {
		t.Fatalf("first round %+v; want one node", r)
	}
	b := newNode(t, srv, "job", "127.0.0.3", 1, 1, 3, nil)
	var rb rendezvous.Round
	var errb error
	var wg sync.WaitGroup
	wg.Go(func() { rb, errb = b.Next(context.Background()) })
	select {
	case s := <-a.Stopped():
		if s.Failure != nil || !strings.Contains(s.Reason, "127.0.0.3") {
			t.Errorf("stop = %+v; want a node waiting to join", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("node 0 was not told of the node waiting")
	}
	ra, erra := a.Next(context.Background())
	wg.Wait()
	if err := errors.Join(erra, errb); err != nil {
		t.Fatal(err)
	}
	for i, r := range []rendezvous.Round{ra, rb} {
		if r.NNodes != 2 || r.NodeRank != i || r.Restart != 0 || r.Number != 1 {
			t.Errorf("node %d: %+v; want 2 nodes, node rank %d, restart 0, round 1", i, r, i)
		}
	}
}

// TestEtcdUnreachable: no etcd at the endpoint is a ConnectError within
// the connect timeout.
func TestEtcdUnreachable(t *testing.T) {
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("127.0.0.1:%d", port)
	start := time.Now()
	_, err = New(context.Background(), Config{Endpoints: []string{ep}, RunID: "x", MinNodes: 1, MaxNodes: 1, NProc: 1, ConnectTimeout: 300 * time.Millisecond})
	var ce *ConnectError
	if !errors.As(err, &ce) || ce.Endpoints[0] != ep {
		t.Fatalf("New(%s) = %v; want a ConnectError", ep, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("New took %v; want about the connect timeout", d)
	}
}

// BenchmarkEtcdRound measures one round of two nodes on a real etcd: from
// both nodes calling Next to both having the round (what a launch adds to
// a multi-node job's start, beyond the launcher's own start).
func BenchmarkEtcdRound(b *testing.B) {
	srv := etcdtest.Start(b)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		nodes := make([]*Rendezvous, 2)
		for j, addr := range []string{"127.0.0.2", "127.0.0.3"} {
			e, err := New(context.Background(), Config{Endpoints: []string{srv.Endpoint}, RunID: fmt.Sprint("bench", i),
				MinNodes: 2, MaxNodes: 2, NProc: 2, LocalAddr: addr, LeaseTTL: 5 * time.Second})
			if err != nil {
				b.Fatal(err)
			}
			nodes[j] = e
		}
		b.StartTimer()
		var wg sync.WaitGroup
		for _, e := range nodes {
			wg.Go(func() {
				if _, err := e.Next(context.Background()); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		for _, e := range nodes {
			e.Close()
		}
		b.StartTimer()
	}
}
