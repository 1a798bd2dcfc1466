package etcd

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// testMembers is a round of n nodes of 1 to 3 ranks, coordinated by the
// node at index c, encoded.
func testMembers(n, c int) (*members, []byte, [][]byte) {
	m := &members{Restart: 2, MinNodes: n, MaxNodes: n}
	for i := range n {
		addr := fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255)
		m.Nodes = append(m.Nodes, rendezvous.Node{ID: nodeID(addr, 100+i, 0x1000+int64(i)), Addr: addr, Host: "h" + addr, NProc: 1 + i%3, Port: 20000 + i})
	}
	slices.SortFunc(m.Nodes, func(a, b rendezvous.Node) int { return strings.Compare(a.ID, b.ID) })
	m.Coord = m.Nodes[c].ID
	head, shards := m.encode()
	return m, head, shards
}

// TestMembersShards: 200 nodes make 4 shards of 64 (the last 8), whose
// header and lines parse back to the same nodes and ranks; a shard not
// written with its header, not on the coordinator's lease, short of a
// node, with nodes out of order or ranks other than its header's is
// refused.
func TestMembersShards(t *testing.T) {
	want, head, shards := testMembers(200, 7)
	if len(shards) != 4 || want.Shard != 64 {
		t.Fatalf("%d shards of %d; want 4 of 64", len(shards), want.Shard)
	}
	m, err := parseMembers(head, 200, 200)
	if err != nil {
		t.Fatal(err)
	}
	m.rev = 42
	lease := leaseOf(m.Coord)
	kv := func(v []byte) *gateway.KeyValue { return &gateway.KeyValue{Value: v, ModRevision: 42, Lease: lease} }
	var all []rendezvous.Node
	for k, s := range shards {
		nodes, err := m.parseShard(k, kv(s))
		if err != nil {
			t.Fatalf("shard %d: %v", k, err)
		}
		all = append(all, nodes...)
	}
	world := 0
	for _, n := range want.Nodes {
		world += n.NProc
	}
	if !slices.Equal(all, want.Nodes) || m.World != world || m.Node0 != want.Nodes[0] {
		t.Fatalf("shards give %d nodes, world %d; want the %d encoded, world %d", len(all), m.World, len(want.Nodes), world)
	}
	first := 0
	for _, n := range want.Nodes[:128] {
		first += n.NProc
	}
	if m.Ranks[2] != first {
		t.Errorf("shard 2's first rank %d; want %d", m.Ranks[2], first)
	}
	lines := strings.SplitAfter(string(shards[1]), "\n")
	swapped := append([]string{lines[1], lines[0]}, lines[2:]...)
	bad := map[string]*gateway.KeyValue{
		"another revision":  {Value: shards[1], ModRevision: 43, Lease: lease},
		"another lease":     {Value: shards[1], ModRevision: 42, Lease: lease + 1},
		"a node short":      kv([]byte(strings.Join(lines[:len(lines)-2], ""))),
		"out of order":      kv([]byte(strings.Join(swapped, ""))),
		"other ranks":       kv([]byte(strings.Replace(string(shards[1]), " 1 ", " 9 ", 1))),
		"a line cut short":  kv(shards[1][:len(shards[1])-1]),
		"nproc not numeric": kv([]byte(strings.Replace(string(shards[1]), " 1 ", " x ", 1))),
	}
	for what, b := range bad {
		if _, err := m.parseShard(1, b); err == nil {
			t.Errorf("shard 1 with %s: accepted", what)
		}
	}
	for what, h := range map[string]string{
		"no coordinator":   strings.Replace(string(head), m.Coord, "", 1),
		"shards reordered": strings.Replace(string(head), `"first_ranks":[0,`, `"first_ranks":[1,`, 1),
		"count off":        strings.Replace(string(head), `"count":200`, `"count":201`, 1),
		"old format":       `{"nodes":[],"restart":0,"min_nodes":200,"max_nodes":200}`,
	} {
		if _, err := parseMembers([]byte(h), 200, 200); err == nil {
			t.Errorf("header with %s: accepted", what)
		}
	}
}

// TestMembersShardsPositions: 200 nodes whose positions run against their
// ids (some without one, after them) parse back by position from their
// shards, each node finds its own place by its position and id, and a
// shard or header whose positions are out of order, out of range or not
// canonical is refused.
func TestMembersShardsPositions(t *testing.T) {
	m := &members{Restart: 0, MinNodes: 200, MaxNodes: 200}
	for i := range 200 {
		addr := fmt.Sprintf("10.0.%d.%d", i>>8, i&255)
		pos := 0
		if i < 150 {
			pos = 150 - i
		}
		m.Nodes = append(m.Nodes, rendezvous.Node{ID: nodeID(addr, 100+i, 0x1000+int64(i)), Addr: addr, Host: "h", NProc: 1, Port: 20000 + i, Position: pos})
	}
	slices.SortFunc(m.Nodes, nodeOrder)
	if m.Nodes[0].Position != 1 || m.Nodes[149].Position != 150 || m.Nodes[150].Position != 0 || m.Nodes[150].Addr != "10.0.0.150" {
		t.Fatalf("order: %+v, %+v; want position 1 first, those without one after 150", m.Nodes[0], m.Nodes[150])
	}
	want := slices.Clone(m.Nodes)
	m.Coord = m.Nodes[3].ID
	head, shards := m.encode()
	got, err := parseMembers(head, 200, 200)
	if err != nil {
		t.Fatal(err)
	}
	got.rev = 42
	kv := func(v []byte) *gateway.KeyValue {
		return &gateway.KeyValue{Value: v, ModRevision: 42, Lease: leaseOf(got.Coord)}
	}
	var all []rendezvous.Node
	for k, s := range shards {
		nodes, err := got.parseShard(k, kv(s))
		if err != nil {
			t.Fatalf("shard %d: %v", k, err)
		}
		all = append(all, nodes...)
	}
	if !slices.Equal(all, want) {
		t.Fatal("shards do not give the nodes encoded, in order")
	}
	got.Nodes = all
	for i, n := range want {
		e := &Rendezvous{self: n}
		if rank, first, err := e.placeSelf(t.Context(), 0, got); err != nil || rank != i || first != i {
			t.Errorf("node %s: placed at %d, first rank %d, %v; want %d", n.ID, rank, first, err, i)
		}
	}
	lines := strings.SplitAfter(string(shards[1]), "\n")
	swapped := append([]string{lines[1], lines[0]}, lines[2:]...)
	for what, s := range map[string]string{
		"positions swapped":   strings.Join(swapped, ""),
		"position 0 written":  strings.Replace(string(shards[1]), " 66\n", " 0\n", 1),
		"position not Itoa's": strings.Replace(string(shards[1]), " 66\n", " 066\n", 1),
		"position over max":   strings.Replace(string(shards[1]), " 66\n", " 201\n", 1),
	} {
		if _, err := got.parseShard(1, kv([]byte(s))); err == nil {
			t.Errorf("shard 1 with %s: accepted", what)
		}
	}
	for what, h := range map[string]string{
		"first positions short":        strings.Replace(string(head), `"first_positions":[1,`, `"first_positions":[`, 1),
		"first positions out of order": strings.Replace(string(head), `"first_positions":[1,65,`, `"first_positions":[1,200,`, 1),
	} {
		if _, err := parseMembers([]byte(h), 200, 200); err == nil {
			t.Errorf("header with %s: accepted", what)
		}
	}
}
