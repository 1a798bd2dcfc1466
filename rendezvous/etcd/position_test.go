//go:build linux

package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// nextInOrder calls Next on each node in turn, each once the one before
// it has joined round n (its join key is in etcd), and returns their
// rounds.
func nextInOrder(t *testing.T, n int, nodes ...*testNode) []rendezvous.Round {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	now, err := nodes[0].cli.Get(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	joins := nodes[0].cli.Watch(ctx, nodes[0].roundKey(n, "join")+"/", gateway.WithPrefix(), gateway.WithFilterDelete(), gateway.WithRev(now.Header.Revision+1))
	rounds := make([]rendezvous.Round, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Go(func() { rounds[i], errs[i] = node.Next(ctx) })
		if i == len(nodes)-1 {
			break
		}
		key := node.roundKey(n, "join", node.self.ID)
	wait:
		for {
			select {
			case wr := <-joins:
				if slices.ContainsFunc(wr.Events, func(ev *gateway.Event) bool { return string(ev.Kv.Key) == key }) {
					break wait
				}
			case <-ctx.Done():
				t.Fatalf("node %s did not join", node.self.Addr)
			}
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Next: %v", err)
	}
	return rounds
}

// withPosition sets a node's position.
func withPosition(p int) func(*Config) { return func(c *Config) { c.Position = p } }

// TestEtcdPositions: nodes that join in the reverse of their positions,
// with addresses in that reverse order too, get node ranks, first ranks
// and the master by position, on every node, and keep them next round.
func TestEtcdPositions(t *testing.T) {
	srv := etcdtest.Start(t)
	c := newNode(t, srv, "job", "127.0.0.2", 1, 3, 3, withPosition(3))
	b := newNode(t, srv, "job", "127.0.0.3", 2, 3, 3, withPosition(2))
	a := newNode(t, srv, "job", "127.0.0.4", 3, 3, 3, withPosition(1))
	for round, rs := range [][]rendezvous.Round{nextInOrder(t, 0, c, b, a), nextInOrder(t, 1, c, b, a)} {
		want := []struct{ rank, first int }{{2, 5}, {1, 3}, {0, 0}}
		for i, r := range rs {
			if r.NodeRank != want[i].rank || r.FirstRank != want[i].first || r.WorldSize != 6 || r.MasterAddr != "127.0.0.4" || r.MasterPort != a.Self().Port {
				t.Errorf("round %d, node %d: %+v; want node rank %d, first rank %d of 6, master 127.0.0.4:%d", round, i, r.Membership, want[i].rank, want[i].first, a.Self().Port)
			}
		}
		if hosts := addrs(rs[2].Hosts); !slices.Equal(hosts, []string{"127.0.0.4", "127.0.0.3", "127.0.0.2"}) {
			t.Errorf("round %d: node 0's hosts %v; want them by position", round, hosts)
		}
		if round == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if _, err := c.Fail(ctx, rendezvous.Failure{Rank: 5, LocalRank: 0, Pid: 1, ExitCode: 1, Time: time.Now()}); err != nil {
				t.Fatal(err)
			}
			cancel()
			for _, n := range []*testNode{a, b, c} {
				select {
				case <-n.Stopped():
				case <-time.After(10 * time.Second):
					t.Fatalf("node %s was not stopped by the failure", n.self.Addr)
				}
			}
		}
	}
}

// TestEtcdPositionsShared: nodes without a position follow those with
// one; two nodes claiming one position are ordered by id, with a warning
// that names both.
func TestEtcdPositionsShared(t *testing.T) {
	srv := etcdtest.Start(t)
	x := newNode(t, srv, "job", "127.0.0.2", 1, 4, 4, nil)
	y := newNode(t, srv, "job", "127.0.0.3", 1, 4, 4, withPosition(2))
	z := newNode(t, srv, "job", "127.0.0.4", 1, 4, 4, withPosition(1))
	w := newNode(t, srv, "job", "127.0.0.5", 1, 4, 4, withPosition(1))
	rs := nextAll(t, x, y, z, w)
	for i, want := range []int{3, 2, 0, 1} {
		if rs[i].NodeRank != want {
			t.Errorf("node %d: node rank %d; want %d", i, rs[i].NodeRank, want)
		}
	}
	notes := x.notes.String() + y.notes.String() + z.notes.String() + w.notes.String()
	if want := "warning: nodes 127.0.0.4 and 127.0.0.5 both claim position 1; ordered by id (node ranks 0 and 1)"; strings.Count(notes, want) != 1 {
		t.Errorf("notes %q; want one %q", notes, want)
	}
}

// TestJoinPosition: a join record's position is parsed strictly and
// bounded by the job's number of nodes; a record without one (as an
// mpspawn of this version without a host list writes it) still parses;
// New refuses a position out of range.
func TestJoinPosition(t *testing.T) {
	id := nodeID("10.0.0.1", 7, 0x99)
	rec := func(extra string) *gateway.KeyValue {
		v := fmt.Sprintf(`{"id":%q,"addr":"10.0.0.1","host":"h","nproc":2,"port":2000%s,"min_nodes":2,"max_nodes":4}`, id, extra)
		return &gateway.KeyValue{Value: []byte(v), Lease: 0x99}
	}
	for extra, want := range map[string]int{"": 0, `,"position":1`: 1, `,"position":4`: 4} {
		j, err := parseJoin(id, rec(extra))
		if err != nil || j.Position != want {
			t.Errorf("join record with %q: position %d, %v; want %d", extra, j.Position, err, want)
		}
	}
	for _, extra := range []string{`,"position":5`, `,"position":-1`, `,"position":"1"`, `,"position":1.5`} {
		if _, err := parseJoin(id, rec(extra)); err == nil {
			t.Errorf("join record with %q: accepted", extra)
		}
	}
	b, _ := json.Marshal(joinRecord{Node: rendezvous.Node{ID: id, Addr: "10.0.0.1", Host: "h", NProc: 2, Port: 2000}, MinNodes: 2, MaxNodes: 4})
	if strings.Contains(string(b), "position") {
		t.Errorf("join record without a position %s; want none written", b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := New(ctx, Config{Endpoints: []string{"127.0.0.1:1"}, RunID: "job", MinNodes: 2, MaxNodes: 2, NProc: 1, LocalAddr: "127.0.0.2", Position: 3, ConnectTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "position 3 out of range") {
		t.Errorf("New with position 3 of 2 nodes: %v; want position out of range", err)
	}
}
