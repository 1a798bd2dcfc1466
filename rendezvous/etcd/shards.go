package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"unicode/utf8"

	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// A round's members are written in at most maxShards shards of at least
// shardMin nodes: one transaction of at most maxShards+1 puts (etcd's
// --max-txn-ops is 128 by default).
const (
	shardMin  = 64
	maxShards = 100
)

func (e *Rendezvous) shardKey(n, k int) string {
	return e.roundKey(n, "members", fmt.Sprintf("%04d", k))
}

// membersOps are the puts of round n's members header and shards, on
// this node's lease.
func (e *Rendezvous) membersOps(n int, head []byte, shards [][]byte) []gateway.Op {
	ops := []gateway.Op{gateway.OpPut(e.roundKey(n, "members"), string(head), gateway.WithLease(e.lease))}
	for k, s := range shards {
		ops = append(ops, gateway.OpPut(e.shardKey(n, k), string(s), gateway.WithLease(e.lease)))
	}
	return ops
}

// verifyMembers verifies round n's members header kv. The coordinator
// that wrote them passes what it wrote (own): the header must be that.
// Any other node checks the header's shape, that it is on the lease of
// the coordinator it names, and that this coordinator is the one it saw
// hold the round's coordination (coord; else it reads, at the header's
// revision, the coordination and the coordinator's join: two reads). With
// place, node 0 then reads every shard, any other node its own; a node in
// none is errTooLate's.
func (e *Rendezvous) verifyMembers(ctx context.Context, n int, kv *gateway.KeyValue, own *members, coord string, place bool) (*members, error) {
	if own != nil {
		if head, _ := own.encode(); bytes.Equal(head, kv.Value) {
			own.rev = kv.ModRevision
			return own, nil
		}
	}
	m, err := parseMembers(kv.Value, e.cfg.MinNodes, e.cfg.MaxNodes)
	if err != nil {
		return nil, err
	}
	m.rev = kv.ModRevision
	if m.MinNodes != e.cfg.MinNodes || m.MaxNodes != e.cfg.MaxNodes {
		return nil, &NNodesError{RunID: e.cfg.RunID, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes,
			Addr: m.Node0.Addr, OtherMin: m.MinNodes, OtherMax: m.MaxNodes}
	}
	if kv.Lease == 0 || kv.Lease != leaseOf(m.Coord) {
		return nil, fmt.Errorf("coordinator %.80q is not a node that joined the round (the record is not on its lease)", m.Coord)
	}
	if m.Coord != coord {
		if err := e.checkCoord(ctx, n, m.rev, m.Coord); err != nil {
			return nil, err
		}
	}
	if place && m.Node0.ID == e.self.ID {
		_, err = m.all(ctx, e, n)
	}
	return m, err
}

// placeSelf finds this node in round n's members m: its node rank and
// first global rank, from its own shard (errTooLate: not a member).
func (e *Rendezvous) placeSelf(ctx context.Context, n int, m *members) (rank, first int, err error) {
	// The last shard whose first node is not after this one.
	k := sort.Search(len(m.Firsts), func(k int) bool { return nodeOrder(m.first(k), e.self) > 0 }) - 1
	if k < 0 {
		return 0, 0, errTooLate
	}
	nodes, err := m.shard(ctx, e, n, k)
	if err != nil {
		return 0, 0, err
	}
	j := slices.IndexFunc(nodes, func(x rendezvous.Node) bool { return x.ID == e.self.ID })
	switch {
	case j < 0:
		return 0, 0, errTooLate
	case nodes[j] != e.self:
		return 0, 0, errors.New("this node's entry is not as it joined")
	}
	first = m.Ranks[k]
	for _, x := range nodes[:j] {
		first += x.NProc
	}
	return k*m.Shard + j, first, nil
}

// shard is round n's members' shard k, read once and verified: on the
// coordinator's lease, written with the header, its nodes well-formed,
// in order, within the shard's first ids and ranks.
func (m *members) shard(ctx context.Context, e *Rendezvous, n, k int) ([]rendezvous.Node, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Nodes != nil {
		return m.Nodes[k*m.Shard : min((k+1)*m.Shard, m.Count)], nil
	}
	if s, ok := m.shards[k]; ok {
		return s, nil
	}
	resp, err := e.readAtMembers(ctx, m, e.shardKey(n, k))
	if err != nil {
		return nil, fmt.Errorf("read the members' shard %d: %w", k, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("the members' shard %d is gone", k)
	}
	nodes, err := m.parseShard(k, resp.Kvs[0])
	if err != nil {
		return nil, err
	}
	if m.shards == nil {
		m.shards = map[int][]rendezvous.Node{}
	}
	m.shards[k] = nodes
	return nodes, nil
}

// readAtMembers reads key at the revision of the members' header: the
// shards go with the coordinator's lease, and may have gone since (the
// coordinator left done first). It reads serializably first (no consensus
// round: a thousand nodes read at once; the revision makes any etcd
// member's copy the same), then linearizably (a member lagging behind the
// revision), and, the revision compacted, now.
func (e *Rendezvous) readAtMembers(ctx context.Context, m *members, key string, opts ...gateway.OpOption) (*gateway.GetResponse, error) {
	at := append(opts[:len(opts):len(opts)], gateway.WithRev(m.rev))
	resp, err := e.cli.Get(ctx, key, append(at, gateway.WithSerializable())...)
	if err != nil && !errors.Is(err, gateway.ErrCompacted) {
		resp, err = e.cli.Get(ctx, key, at...)
	}
	if errors.Is(err, gateway.ErrCompacted) {
		resp, err = e.cli.Get(ctx, key, opts...)
	}
	return resp, err
}

// all is every member of round n, its shards read (once) and verified.
func (m *members) all(ctx context.Context, e *Rendezvous, n int) ([]rendezvous.Node, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Nodes != nil {
		return m.Nodes, nil
	}
	p := e.roundKey(n, "members") + "/"
	resp, err := e.readAtMembers(ctx, m, p, gateway.WithPrefix(), gateway.WithLimit(maxShards+1))
	if err != nil {
		return nil, fmt.Errorf("read the members' shards: %w", err)
	}
	if len(resp.Kvs) != len(m.Firsts) {
		return nil, fmt.Errorf("%d members' shards, not %d", len(resp.Kvs), len(m.Firsts))
	}
	all := make([]rendezvous.Node, 0, m.Count)
	for k, kv := range resp.Kvs {
		if string(kv.Key) != e.shardKey(n, k) {
			return nil, fmt.Errorf("members' shard %.80q out of place", kv.Key)
		}
		nodes, err := m.parseShard(k, kv)
		if err != nil {
			return nil, err
		}
		all = append(all, nodes...)
	}
	m.Nodes = all
	return all, nil
}

// parseShard parses and verifies shard k of the members.
func (m *members) parseShard(k int, kv *gateway.KeyValue) ([]rendezvous.Node, error) {
	if kv.ModRevision != m.rev || kv.Lease != leaseOf(m.Coord) || len(kv.Value) > maxMembersValue {
		return nil, fmt.Errorf("members' shard %d: not written with its header, on the coordinator's lease", k)
	}
	size := min(m.Shard, m.Count-k*m.Shard)
	nodes, err := parseMemberLines(string(kv.Value), size)
	if err != nil {
		return nil, fmt.Errorf("members' shard %d: %w", k, err)
	}
	if len(nodes) != size || nodes[0].ID != m.Firsts[k] || nodes[0].Position != m.first(k).Position || k == 0 && nodes[0] != m.Node0 {
		return nil, fmt.Errorf("members' shard %d: %d nodes from %.80q, not %d from its first node", k, len(nodes), nodes[0].ID, size)
	}
	ranks := 0
	for i, x := range nodes {
		if i > 0 && nodeOrder(nodes[i-1], x) >= 0 || k+1 < len(m.Firsts) && nodeOrder(x, m.first(k+1)) >= 0 {
			return nil, fmt.Errorf("members' shard %d: node %.80q out of order", k, x.ID)
		}
		if err := checkNode(x, m.MaxNodes); err != nil {
			return nil, fmt.Errorf("members' shard %d: node %.80q is not a node that joined the round: %w", k, x.ID, err)
		}
		ranks += x.NProc
	}
	if m.Ranks[k]+ranks != m.endRank(k) {
		return nil, fmt.Errorf("members' shard %d: %d ranks, not as its header says", k, ranks)
	}
	return nodes, nil
}

// node is the member at node rank i.
func (m *members) node(ctx context.Context, e *Rendezvous, n, i int) (rendezvous.Node, error) {
	nodes, err := m.shard(ctx, e, n, i/m.Shard)
	if err != nil {
		return rendezvous.Node{}, err
	}
	return nodes[i%m.Shard], nil
}

// checkCoord checks that node id held round n's coordination, on its
// lease, and had joined the round, at revision rev (or, that history
// compacted, still now, since before rev).
func (e *Rendezvous) checkCoord(ctx context.Context, n int, rev int64, id string) error {
	ck, jk := e.roundKey(n, "coord"), e.roundKey(n, "join", id)
	resp, err := e.cli.Txn(ctx).Then(gateway.OpGet(ck, gateway.WithRev(rev)), gateway.OpGet(jk, gateway.WithRev(rev))).Commit()
	if errors.Is(err, gateway.ErrCompacted) {
		resp, err = e.cli.Txn(ctx).Then(gateway.OpGet(ck), gateway.OpGet(jk)).Commit()
	}
	if err != nil {
		return fmt.Errorf("read its coordinator: %w", err)
	}
	coord, join := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	switch {
	case len(coord) == 0 || string(coord[0].Value) != id || coord[0].Lease != leaseOf(id) || coord[0].CreateRevision > rev:
		return fmt.Errorf("coordinator %.80q is not a node that joined the round (it did not hold the round's coordination)", id)
	case len(join) == 0 || join[0].ModRevision > rev:
		return fmt.Errorf("coordinator %.80q is not a node that joined the round", id)
	}
	if _, err := parseJoin(id, join[0]); err != nil {
		return fmt.Errorf("coordinator %.80q is not a node that joined the round: %w", id, err)
	}
	return nil
}

// parseFailure verifies round n's failure record kv against its members
// m: it names a member (one shard read, the first time), is written on
// that member's lease, node 0's (a lost node's, which node 0 publishes)
// or vouched for by the node that closed the run (whose lease is vouch),
// and carries a failure's exit code.
func (e *Rendezvous) parseFailure(ctx context.Context, kv *gateway.KeyValue, m *members, n int, vouch int64) (rendezvous.Failure, error) {
	var f rendezvous.Failure
	if err := strictJSON(kv.Value, maxFailValue, &f); err != nil {
		return f, err
	}
	if f.NodeRank < 0 || f.NodeRank >= m.Count {
		return f, fmt.Errorf("node rank %d out of range [0, %d)", f.NodeRank, m.Count)
	}
	node, err := m.node(ctx, e, n, f.NodeRank)
	if err != nil {
		return f, err
	}
	if kv.Lease == 0 || kv.Lease != leaseOf(node.ID) && kv.Lease != leaseOf(m.Node0.ID) && kv.Lease != vouch {
		return f, errors.New("not written by a member of the round (not on a member's lease)")
	}
	switch {
	case f.Addr != node.Addr:
		return f, fmt.Errorf("addr %.80q is not node %d's", f.Addr, f.NodeRank)
	case f.ExitCode < 1 || f.ExitCode > 255:
		return f, fmt.Errorf("exit code %d is not a failure's (1 to 255)", f.ExitCode)
	case f.Signal < 0 || f.Signal > 128:
		return f, fmt.Errorf("signal %d out of range", f.Signal)
	case f.Rank < -1 || f.Rank >= m.World:
		return f, fmt.Errorf("rank %d out of range [-1, %d)", f.Rank, m.World)
	case f.LocalRank < -1 || f.LocalRank >= node.NProc:
		return f, fmt.Errorf("local rank %d out of range", f.LocalRank)
	case len(f.Message) > maxMessage || len(f.Cause) > maxMessage || len(f.Host) > maxNameLen:
		return f, errors.New("message, cause or host too long")
	case !utf8.ValidString(f.Message) || !utf8.ValidString(f.Cause) || !utf8.ValidString(f.Host):
		return f, errors.New("message, cause or host not UTF-8")
	}
	return f, nil
}
