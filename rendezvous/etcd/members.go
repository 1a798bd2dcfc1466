package etcd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// members is the value of r/<round>/members: the round's header, written
// by Coord, the round's coordinator, on its lease, in one transaction with
// the shards r/<round>/members/<k>: the nodes in order (see nodeOrder),
// Shard a shard, one line a node, "ID NPROC PORT HOST[ POSITION]" (the
// address is the id's own prefix; the position only where the node has
// one). The header says each shard's first node (its id, and its position
// where any node has one) and first global rank:
// a node reads the header and its own shard, O(N/Shard + Shard) bytes, not
// the O(N) of every member (which made a round's start O(N²) bytes);
// node 0, which aggregates, reads them all.
type members struct {
	Count    int      `json:"count"`
	Restart  int      `json:"restart"`
	MinNodes int      `json:"min_nodes"`
	MaxNodes int      `json:"max_nodes"`
	Coord    string   `json:"coord"`
	World    int      `json:"world"`
	Shard    int      `json:"shard"`
	Firsts   []string `json:"firsts"`
	// FirstPos is each shard's first node's position; absent when no
	// member has one.
	FirstPos []int           `json:"first_positions,omitempty"`
	Ranks    []int           `json:"first_ranks"`
	Node0    rendezvous.Node `json:"node0"`
	// Legacy is a "nodes" field, which no members record of this
	// protocol has: such a record names no coordinator among its nodes,
	// and is refused as such.
	Legacy json.RawMessage `json:"nodes,omitempty"`

	// Nodes is every member, once this node has them all (the
	// coordinator, node 0); else shards holds those read.
	Nodes  []rendezvous.Node `json:"-"`
	rev    int64             // the header's revision
	mu     sync.Mutex
	shards map[int][]rendezvous.Node
}

// encode is m's header and shards; m.Nodes is every member.
func (m *members) encode() (head []byte, shards [][]byte) {
	m.Count, m.Node0, m.World = len(m.Nodes), m.Nodes[0], 0
	m.Shard = max(shardMin, (m.Count+maxShards-1)/maxShards)
	m.Firsts, m.FirstPos, m.Ranks = nil, nil, nil
	positions := slices.ContainsFunc(m.Nodes, func(n rendezvous.Node) bool { return n.Position != 0 })
	for i, n := range m.Nodes {
		if i%m.Shard == 0 {
			m.Firsts, m.Ranks = append(m.Firsts, n.ID), append(m.Ranks, m.World)
			if positions {
				m.FirstPos = append(m.FirstPos, n.Position)
			}
			shards = append(shards, nil)
		}
		k := len(shards) - 1
		shards[k] = fmt.Appendf(shards[k], "%s %d %d %s", n.ID, n.NProc, n.Port, n.Host)
		if n.Position != 0 {
			shards[k] = fmt.Appendf(shards[k], " %d", n.Position)
		}
		shards[k] = append(shards[k], '\n')
		m.World += n.NProc
	}
	head, _ = json.Marshal(m)
	return head, shards
}

// parseMembers parses a round's members header strictly and checks its
// shape: its coordinator, number of nodes (the job's), shards (first
// nodes in order, first ranks rising by at least a rank a node) and node 0.
// Whether the members are nodes that joined is verifyMembers' part.
func parseMembers(value []byte, minN, maxN int) (*members, error) {
	m := &members{}
	if err := strictJSON(value, maxMembersValue, m); err != nil {
		return nil, err
	}
	nshards := 0
	if m.Shard > 0 {
		nshards = (m.Count + m.Shard - 1) / m.Shard
	}
	switch {
	case m.Coord == "" || m.Legacy != nil:
		return nil, fmt.Errorf("coordinator %.80q is not a node that joined the round", m.Coord)
	case m.Count < minN || m.Count > maxN:
		return nil, fmt.Errorf("%d nodes, not between %d and %d", m.Count, minN, maxN)
	case m.Restart < 0 || m.Restart > maxRestart:
		return nil, fmt.Errorf("restart %d out of range", m.Restart)
	case m.Shard < 1 || nshards > maxShards || len(m.Firsts) != nshards || len(m.Ranks) != nshards ||
		m.FirstPos != nil && len(m.FirstPos) != nshards:
		return nil, fmt.Errorf("shards of %d for %d nodes: %d first ids, %d first positions, %d first ranks", m.Shard, m.Count, len(m.Firsts), len(m.FirstPos), len(m.Ranks))
	case m.first(0) != (rendezvous.Node{ID: m.Node0.ID, Position: m.Node0.Position}) || m.Ranks[0] != 0:
		return nil, errors.New("node 0 is not the first shard's first node")
	}
	for k := range nshards {
		size := min(m.Shard, m.Count-k*m.Shard)
		if p := m.first(k).Position; p < 0 || p > maxN {
			return nil, fmt.Errorf("shard %d: first position %d out of range [0, %d]", k, p, maxN)
		}
		if k > 0 && (nodeOrder(m.first(k), m.first(k-1)) <= 0 || m.Ranks[k]-m.Ranks[k-1] < m.Shard) {
			return nil, fmt.Errorf("shard %d out of order", k)
		}
		if end := m.endRank(k); end-m.Ranks[k] < size || end-m.Ranks[k] > size*maxNProc {
			return nil, fmt.Errorf("shard %d: ranks %d to %d for %d nodes", k, m.Ranks[k], end, size)
		}
	}
	if err := checkNode(m.Node0, maxN); err != nil {
		return nil, fmt.Errorf("node 0 %.80q: %w", m.Node0.ID, err)
	}
	return m, nil
}

// first is shard k's first node, as far as the header says: its id and
// position.
func (m *members) first(k int) rendezvous.Node {
	n := rendezvous.Node{ID: m.Firsts[k]}
	if m.FirstPos != nil {
		n.Position = m.FirstPos[k]
	}
	return n
}

// endRank is the global rank after shard k's nodes.
func (m *members) endRank(k int) int {
	if k+1 < len(m.Ranks) {
		return m.Ranks[k+1]
	}
	return m.World
}

// parseMemberLines parses the node lines of a members value.
func parseMemberLines(s string, capacity int) ([]rendezvous.Node, error) {
	nodes := make([]rendezvous.Node, 0, max(capacity, 0))
	for s != "" {
		line, rest, ok := strings.Cut(s, "\n")
		if !ok {
			return nil, errors.New("not a valid record: a node line without its end")
		}
		s = rest
		id, rest, ok1 := strings.Cut(line, " ")
		np, rest, ok2 := strings.Cut(rest, " ")
		pt, rest, ok3 := strings.Cut(rest, " ")
		host, ps, hasPos := strings.Cut(rest, " ")
		nproc, err1 := strconv.Atoi(np)
		port, err2 := strconv.Atoi(pt)
		pos, err3 := 0, error(nil)
		if hasPos {
			// Written only when not 0, and as Itoa writes it.
			if pos, err3 = strconv.Atoi(ps); err3 == nil && (pos == 0 || strconv.Itoa(pos) != ps) {
				err3 = errors.New("not canonical")
			}
		}
		if !ok1 || !ok2 || !ok3 || err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("not a valid record: node line %.80q", line)
		}
		nodes = append(nodes, rendezvous.Node{ID: id, Addr: addrOfID(id), Host: host, NProc: nproc, Port: port, Position: pos})
	}
	return nodes, nil
}

// addrOfID is the address that a node id ADDR-PID-LEASE starts with.
func addrOfID(id string) string {
	i := strings.LastIndexByte(id, '-')
	if i < 0 {
		return ""
	}
	j := strings.LastIndexByte(id[:i], '-')
	if j < 0 {
		return ""
	}
	return id[:j]
}

// createMembers starts round st.n with the nodes joined, unless a join
// record changed or came since this node read it (one comparison over the
// round's join keys, whatever their number), this node no longer holds
// the coordination, or the members key changed (the transaction creates
// it once, or writes over a value that failed verification).
func (e *Rendezvous) createMembers(ctx context.Context, st *joinState) error {
	restart, err := e.restartCount(ctx, st.n)
	if err != nil {
		return err
	}
	nodes := sortedNodes(st.joined)
	e.warnSharedPositions(nodes)
	if len(nodes) > e.cfg.MaxNodes {
		keep := nodes[:e.cfg.MaxNodes-1]
		if i := slices.IndexFunc(nodes, func(x rendezvous.Node) bool { return x.ID == e.self.ID }); i < e.cfg.MaxNodes {
			keep = nodes[:e.cfg.MaxNodes]
		} else {
			keep = append(keep, e.self)
		}
		nodes = keep
	}
	m := &members{Nodes: nodes, Restart: restart, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes, Coord: e.self.ID}
	head, shards := m.encode()
	st.wrote = m
	k, jp := e.roundKey(st.n, "members"), e.roundKey(st.n, "join")+"/"
	// A member's join key deleted since seen is the aggregator's to find
	// (it reads them at the round's start), but the aggregator's own must
	// be there: the others hear of its loss only from the members' write
	// on.
	_, err = e.cli.Txn(ctx).If(gateway.Compare(gateway.ModRevision(k), "=", st.badMembers),
		gateway.Compare(gateway.Value(e.roundKey(st.n, "coord")), "=", e.self.ID),
		gateway.Compare(gateway.ModRevision(jp), "<", st.seen+1).WithPrefix(),
		gateway.Compare(gateway.CreateRevision(e.roundKey(st.n, "join", nodes[0].ID)), ">", 0)).
		Then(e.membersOps(st.n, head, shards)...).Commit()
	if err != nil {
		return e.ctxErr(ctx, fmt.Errorf("rendezvous: start round %d: %w", st.n, err))
	}
	return nil
}

// restartCount is round n's TORCHELASTIC_RESTART_COUNT: the previous
// round's, plus one if that round failed (a change of membership spends
// no restart). The previous round is the one this node ran, or else its
// members verified; a failure counts once verified against them.
func (e *Rendezvous) restartCount(ctx context.Context, n int) (int, error) {
	if n == 0 {
		return 0, nil
	}
	resp, err := e.cli.Txn(ctx).Then(gateway.OpGet(e.roundKey(n-1, "members")), gateway.OpGet(e.roundKey(n-1, "fail"))).Commit()
	if err != nil {
		return 0, e.ctxErr(ctx, fmt.Errorf("rendezvous: read round %d: %w", n-1, err))
	}
	prev, pm := e.last, e.mem
	if prev.Number != n-1 || pm == nil {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return 0, nil
		}
		m, err := e.verifyMembers(ctx, n-1, kvs[0], nil, "", false)
		if err != nil {
			e.warnIgnored(string(kvs[0].Key), err)
			return 0, nil
		}
		prev, pm = rendezvous.Round{Number: n - 1, Restart: m.Restart}, m
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		if _, err := e.parseFailure(ctx, kvs[0], pm, n-1, 0); err != nil {
			e.warnIgnored(string(kvs[0].Key), err)
			return prev.Restart, nil
		}
		return prev.Restart + 1, nil
	}
	return prev.Restart, nil
}

// startRound turns round n's members into this node's Round, at node
// rank i with first rank first, says so in one line, and starts watching
// the round: node 0 reads the round first (Next returns after that read),
// any other node watches from the members' revision on.
func (e *Rendezvous) startRound(ctx context.Context, n int, m *members, i, first int) (rendezvous.Round, error) {
	r := rendezvous.Round{Number: n, Restart: m.Restart, Hosts: m.Nodes}
	r.NNodes, r.NodeRank, r.NProcPerNode, r.FirstRank, r.WorldSize = m.Count, i, e.self.NProc, first, m.World
	r.MasterAddr, r.MasterPort = m.Node0.Addr, m.Node0.Port
	e.round, e.last, e.mem = n, r, m
	shown := []rendezvous.Node{m.Node0}
	if m.Nodes != nil {
		shown = m.Nodes
	}
	fmt.Fprintf(e.cfg.Notes, "mpspawn: rendezvous %s: %d/%s nodes (%s), round %d starts\n", e.cfg.RunID, m.Count, e.wantNodes(), addrListOf(shown, m.Count), n)
	if i == 0 {
		e.cur = e.watchRound(r)
	} else {
		e.cur = e.watchRoundFrom(r, m.rev+1)
	}
	select {
	case <-e.cur.ready:
	case <-ctx.Done():
	}
	return r, nil
}

func (e *Rendezvous) wantNodes() string {
	if e.cfg.MinNodes != e.cfg.MaxNodes {
		return fmt.Sprintf("%d (at least %d)", e.cfg.MaxNodes, e.cfg.MinNodes)
	}
	return fmt.Sprint(e.cfg.MaxNodes)
}

// status is the coordinator's line that shows the nodes waiting for a
// round.
func (e *Rendezvous) status(st *joinState, deadline time.Time) string {
	left := time.Until(deadline).Round(time.Second)
	return fmt.Sprintf("mpspawn: rendezvous %s: %d/%s nodes (%s), waiting up to %v",
		e.cfg.RunID, len(st.joined), e.wantNodes(), addrList(sortedNodes(st.joined)), left)
}

// addrList is the nodes' addresses for a status line: the first few.
func addrList(nodes []rendezvous.Node) string { return addrListOf(nodes, len(nodes)) }

// addrListOf is addrList of the first of count nodes.
func addrListOf(nodes []rendezvous.Node, count int) string {
	const show = 8
	s := strings.Join(addrs(nodes[:min(show, len(nodes))]), ", ")
	if count > min(show, len(nodes)) {
		s += fmt.Sprintf(" and %d more", count-min(show, len(nodes)))
	}
	return s
}

// sortedNodes orders nodes by nodeOrder: node ranks are the same on every
// node, and stay the same across rounds while the nodes do.
func sortedNodes(nodes map[string]joinRecord) []rendezvous.Node {
	out := make([]rendezvous.Node, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.Node)
	}
	slices.SortFunc(out, nodeOrder)
	return out
}

// nodeOrder is the order of node ranks: the nodes with a position by
// position, then those without one; nodes at the same position (two that
// claim one, or none) by id. Only ID and Position count.
func nodeOrder(a, b rendezvous.Node) int {
	key := func(p int) int {
		if p == 0 {
			return math.MaxInt
		}
		return p
	}
	if c := cmp.Compare(key(a.Position), key(b.Position)); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

// warnSharedPositions warns, once each, of nodes of a round's members
// that claim the same position: they are ordered by id.
func (e *Rendezvous) warnSharedPositions(nodes []rendezvous.Node) {
	for i := 1; i < len(nodes); i++ {
		a, b := nodes[i-1], nodes[i]
		if a.Position == 0 || a.Position != b.Position {
			continue
		}
		if _, seen := e.warned.LoadOrStore("position/"+b.ID, true); !seen {
			fmt.Fprintf(e.cfg.Notes, "mpspawn: rendezvous %s: warning: nodes %s and %s both claim position %d; ordered by id (node ranks %d and %d)\n",
				e.cfg.RunID, a.Addr, b.Addr, a.Position, i-1, i)
		}
	}
}

func addrs(nodes []rendezvous.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Addr
	}
	return out
}
