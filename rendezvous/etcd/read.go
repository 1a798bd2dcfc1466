package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/mpspawn/mpspawn/rendezvous"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// readBatch is how many values one request of a bounded read fetches.
const readBatch = 64

// readRun reads the keys from prefix on at revision rev (0: the newest) in a
// bounded way: it lists the keys alone (at most maxKeysRead), then fetches
// the values of those that want selects from the listing (key, lease), a
// batch at a time, so that values nobody reads (however many, however
// large) cost nothing. It returns the listing, the values fetched and the
// revision read.
func (e *Rendezvous) readRun(ctx context.Context, rev int64, prefix string, want func(kv *mvccpb.KeyValue) bool) (keys, kvs []*mvccpb.KeyValue, at int64, err error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(maxKeysRead)}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := e.cli.Get(ctx, prefix, opts...)
	if err != nil {
		return nil, nil, 0, err
	}
	at = resp.Header.Revision
	if rev > 0 {
		at = rev
	}
	if resp.More {
		e.warnIgnored(prefix, fmt.Errorf("more than %d keys: only the first %d are read", maxKeysRead, maxKeysRead))
	}
	var sel []string
	for _, kv := range resp.Kvs {
		if want(kv) {
			sel = append(sel, string(kv.Key))
		}
	}
	for len(sel) > 0 {
		batch := sel[:min(readBatch, len(sel))]
		sel = sel[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for i, k := range batch {
			ops[i] = clientv3.OpGet(k, clientv3.WithRev(at))
		}
		tresp, err := e.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, nil, 0, err
		}
		for _, r := range tresp.Responses {
			kvs = append(kvs, r.GetResponseRange().Kvs...)
		}
	}
	return resp.Kvs, kvs, at, nil
}

// roundPart splits a key into its round and the rest, for the key filters
// of bounded reads.
func (e *Rendezvous) roundPart(kv *mvccpb.KeyValue) (int, string, bool) {
	return e.parseRoundKey(string(kv.Key))
}

// onOwnLease reports whether the join key kv of node id is on the lease
// that the id names; it warns when not (its value is then never read).
func (e *Rendezvous) onOwnLease(id string, kv *mvccpb.KeyValue) bool {
	switch {
	case kv.Lease == 0:
		e.warnIgnored(string(kv.Key), errors.New("not attached to a lease"))
	case kv.Lease != leaseOf(id):
		e.warnIgnored(string(kv.Key), fmt.Errorf("attached to lease %x, not to its node's lease", kv.Lease))
	default:
		return true
	}
	return false
}

// verifyMembers verifies round n's members key kv. The coordinator that
// wrote them passes the nodes it saw join (joined): every member must be
// one of them, as it joined. Any other node checks the record's shape,
// its own entry, that the record is on the lease of the coordinator it
// names, and that this coordinator held the round's coordination and
// had joined, as the record states it, when the record was written: no
// read when it is the coordinator this node knows (coord), else two,
// whatever the number of nodes.
func (e *Rendezvous) verifyMembers(ctx context.Context, n int, kv *mvccpb.KeyValue, joined map[string]joinRecord, coord string) (*members, error) {
	m, ci, err := parseMembers(kv.Value, e.cfg.MinNodes, e.cfg.MaxNodes)
	if err != nil {
		return nil, err
	}
	if m.MinNodes != e.cfg.MinNodes || m.MaxNodes != e.cfg.MaxNodes {
		return nil, &NNodesError{RunID: e.cfg.RunID, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes,
			Addr: m.Nodes[ci].Addr, OtherMin: m.MinNodes, OtherMax: m.MaxNodes}
	}
	if joined != nil {
		for _, node := range m.Nodes {
			if j, ok := joined[node.ID]; !ok || j.Node != node {
				return nil, fmt.Errorf("node %.80q is not a node that joined the round", node.ID)
			}
		}
		return m, nil
	}
	for _, node := range m.Nodes {
		if node.ID == e.self.ID && node != e.self {
			return nil, errors.New("this node's entry is not as it joined")
		}
	}
	if kv.Lease == 0 || kv.Lease != leaseOf(m.Coord) {
		return nil, fmt.Errorf("coordinator %.80q is not a node that joined the round (the record is not on its lease)", m.Coord)
	}
	if m.Coord == coord {
		return m, nil
	}
	return m, e.checkCoord(ctx, n, kv.ModRevision, m.Nodes[ci])
}

// checkCoord checks that node c held round n's coordination, on its
// lease, and had joined the round as stated, at revision rev (or, that
// history compacted, still now, since before rev).
func (e *Rendezvous) checkCoord(ctx context.Context, n int, rev int64, c rendezvous.Node) error {
	ck, jk := e.roundKey(n, "coord"), e.roundKey(n, "join", c.ID)
	resp, err := e.cli.Txn(ctx).Then(clientv3.OpGet(ck, clientv3.WithRev(rev)), clientv3.OpGet(jk, clientv3.WithRev(rev))).Commit()
	if errors.Is(err, rpctypes.ErrCompacted) {
		resp, err = e.cli.Txn(ctx).Then(clientv3.OpGet(ck), clientv3.OpGet(jk)).Commit()
	}
	if err != nil {
		return fmt.Errorf("read its coordinator: %w", err)
	}
	coord, join := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	switch {
	case len(coord) == 0 || string(coord[0].Value) != c.ID || coord[0].Lease != leaseOf(c.ID) || coord[0].CreateRevision > rev:
		return fmt.Errorf("coordinator %.80q is not a node that joined the round (it did not hold the round's coordination)", c.ID)
	case len(join) == 0 || join[0].ModRevision > rev:
		return fmt.Errorf("coordinator %.80q is not a node that joined the round", c.ID)
	}
	j, err := parseJoin(c.ID, join[0])
	if err != nil || j.Node != c {
		return fmt.Errorf("coordinator %.80q is not a node that joined the round as its join record states", c.ID)
	}
	return nil
}

// parseRoundID splits rest ("join/<id>", "done/<id>") of a round's key.
func parseRoundID(rest, kind string) (string, bool) {
	return strings.CutPrefix(rest, kind+"/")
}
