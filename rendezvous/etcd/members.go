package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// members is the value of r/<round>/members: the round's nodes, in id
// order, written by Coord, the round's coordinator, one of them.
//
// Every node reads it once a round, so that its size and its parse are
// paid N times: it is a JSON header line, then one line a node, "ID NPROC
// PORT HOST" (the address is the id's own prefix), about half the bytes
// of the nodes as JSON and a tenth of the parse.
type members struct {
	Nodes    []rendezvous.Node `json:"-"`
	Count    int               `json:"count"`
	Restart  int               `json:"restart"`
	MinNodes int               `json:"min_nodes"`
	MaxNodes int               `json:"max_nodes"`
	Coord    string            `json:"coord"`
	// Legacy is a "nodes" field, which no members record of this
	// protocol has: a record with one names no coordinator among its
	// (line) nodes, and is refused as such.
	Legacy json.RawMessage `json:"nodes,omitempty"`
}

// encode is m's value.
func (m *members) encode() []byte {
	m.Count = len(m.Nodes)
	b, _ := json.Marshal(m)
	b = append(b, '\n')
	for _, n := range m.Nodes {
		b = fmt.Appendf(b, "%s %d %d %s\n", n.ID, n.NProc, n.Port, n.Host)
	}
	return b
}

// parseMembers parses a round's members strictly and checks their shape:
// the coordinator that wrote them is one of them, their number is the
// job's, every member is a well-formed node, once, in id order. It
// returns the coordinator's index. Whether the members are nodes that
// joined is verifyMembers' part.
func parseMembers(value []byte, minN, maxN int) (*members, int, error) {
	if len(value) > maxMembersValue {
		return nil, 0, fmt.Errorf("value of %d bytes, over the %d allowed", len(value), maxMembersValue)
	}
	head, lines, _ := strings.Cut(string(value), "\n")
	var m members
	if err := strictJSON([]byte(head), maxMembersValue, &m); err != nil {
		return nil, 0, err
	}
	nodes, err := parseMemberLines(lines, min(m.Count, maxN))
	if err != nil {
		return nil, 0, err
	}
	m.Nodes = nodes
	coord := slices.IndexFunc(nodes, func(n rendezvous.Node) bool { return n.ID == m.Coord })
	switch {
	case coord < 0 || m.Legacy != nil:
		return nil, 0, fmt.Errorf("coordinator %.80q is not a node that joined the round", m.Coord)
	case len(nodes) != m.Count || len(nodes) < minN || len(nodes) > maxN:
		return nil, 0, fmt.Errorf("%d nodes (count %d), not between %d and %d", len(nodes), m.Count, minN, maxN)
	case m.Restart < 0 || m.Restart > maxRestart:
		return nil, 0, fmt.Errorf("restart %d out of range", m.Restart)
	}
	for i, n := range nodes {
		if i > 0 && nodes[i-1].ID >= n.ID {
			return nil, 0, fmt.Errorf("node %.80q out of order", n.ID)
		}
		if err := checkNode(n); err != nil {
			return nil, 0, fmt.Errorf("node %.80q is not a node that joined the round: %w", n.ID, err)
		}
	}
	return &m, coord, nil
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
		pt, host, ok3 := strings.Cut(rest, " ")
		nproc, err1 := strconv.Atoi(np)
		port, err2 := strconv.Atoi(pt)
		if !ok1 || !ok2 || !ok3 || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("not a valid record: node line %.80q", line)
		}
		nodes = append(nodes, rendezvous.Node{ID: id, Addr: addrOfID(id), Host: host, NProc: nproc, Port: port})
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
	if len(nodes) > e.cfg.MaxNodes {
		keep := nodes[:e.cfg.MaxNodes-1]
		if i := slices.IndexFunc(nodes, func(x rendezvous.Node) bool { return x.ID == e.self.ID }); i < e.cfg.MaxNodes {
			keep = nodes[:e.cfg.MaxNodes]
		} else {
			keep = append(keep, e.self)
		}
		nodes = keep
	}
	m := members{Nodes: nodes, Restart: restart, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes, Coord: e.self.ID}
	b := m.encode()
	k, jp := e.roundKey(st.n, "members"), e.roundKey(st.n, "join")+"/"
	// A member's join key deleted since seen is the aggregator's to find
	// (it reads them at the round's start), but the aggregator's own must
	// be there: the others hear of its loss only from the members' write
	// on.
	_, err = e.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", st.badMembers),
		clientv3.Compare(clientv3.Value(e.roundKey(st.n, "coord")), "=", e.self.ID),
		clientv3.Compare(clientv3.ModRevision(jp), "<", st.seen+1).WithPrefix(),
		clientv3.Compare(clientv3.CreateRevision(e.roundKey(st.n, "join", nodes[0].ID)), ">", 0)).
		Then(clientv3.OpPut(k, string(b), clientv3.WithLease(e.lease))).Commit()
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
	resp, err := e.cli.Txn(ctx).Then(clientv3.OpGet(e.roundKey(n-1, "members")), clientv3.OpGet(e.roundKey(n-1, "fail"))).Commit()
	if err != nil {
		return 0, e.ctxErr(ctx, fmt.Errorf("rendezvous: read round %d: %w", n-1, err))
	}
	prev := e.last
	if prev.Number != n-1 || prev.Hosts == nil {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return 0, nil
		}
		m, err := e.verifyMembers(ctx, n-1, kvs[0], nil, "")
		if err != nil {
			e.warnIgnored(string(kvs[0].Key), err)
			return 0, nil
		}
		prev = roundOf(n-1, m, 0)
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		if _, err := parseFailure(kvs[0], prev, 0); err != nil {
			e.warnIgnored(string(kvs[0].Key), err)
			return prev.Restart, nil
		}
		return prev.Restart + 1, nil
	}
	return prev.Restart, nil
}

// roundOf is round n with members m, as node i of them sees it.
func roundOf(n int, m *members, i int) rendezvous.Round {
	r := rendezvous.Round{Number: n, Restart: m.Restart, Hosts: m.Nodes}
	r.NNodes, r.NodeRank, r.NProcPerNode = len(m.Nodes), i, m.Nodes[i].NProc
	for j, node := range m.Nodes {
		if j < i {
			r.FirstRank += node.NProc
		}
		r.WorldSize += node.NProc
	}
	r.MasterAddr, r.MasterPort = m.Nodes[0].Addr, m.Nodes[0].Port
	return r
}

// startRound turns round n's members, written at revision rev, into this
// node's Round, says so in one line, and starts watching the round: the
// aggregator reads the round first (Next returns after that read), any
// other node watches from the members' revision on.
func (e *Rendezvous) startRound(ctx context.Context, n int, m *members, rev int64) (rendezvous.Round, error) {
	i := slices.IndexFunc(m.Nodes, func(x rendezvous.Node) bool { return x.ID == e.self.ID })
	if i < 0 {
		return rendezvous.Round{}, errTooLate
	}
	r := roundOf(n, m, i)
	e.round, e.last = n, r
	fmt.Fprintf(e.cfg.Notes, "mpspawn: rendezvous %s: %d/%s nodes (%s), round %d starts\n", e.cfg.RunID, len(m.Nodes), e.wantNodes(), addrList(m.Nodes), n)
	if i == 0 {
		e.cur = e.watchRound(r)
	} else {
		e.cur = e.watchRoundFrom(r, rev+1)
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
func addrList(nodes []rendezvous.Node) string {
	const show = 8
	s := strings.Join(addrs(nodes[:min(show, len(nodes))]), ", ")
	if len(nodes) > show {
		s += fmt.Sprintf(" and %d more", len(nodes)-show)
	}
	return s
}

// sortedNodes orders nodes by id: node ranks are the same on every node,
// and stay the same across rounds while the nodes do.
func sortedNodes(nodes map[string]joinRecord) []rendezvous.Node {
	out := make([]rendezvous.Node, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.Node)
	}
	slices.SortFunc(out, func(a, b rendezvous.Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func addrs(nodes []rendezvous.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Addr
	}
	return out
}
