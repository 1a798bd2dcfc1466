package etcd

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/mpspawn/mpspawn/rendezvous"
	"go.etcd.io/etcd/api/v3/mvccpb"
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
	kv := func(v []byte) *mvccpb.KeyValue { return &mvccpb.KeyValue{Value: v, ModRevision: 42, Lease: lease} }
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
	bad := map[string]*mvccpb.KeyValue{
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
