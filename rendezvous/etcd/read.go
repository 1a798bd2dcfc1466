package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/mpspawn/mpspawn/rendezvous"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// readBatch is how many values one request of a bounded read fetches.
const readBatch = 16

// readRun reads the run's keys at revision rev (0: the newest) in a
// bounded way: it lists the keys alone (at most maxKeysRead), then fetches
// the values of those that want selects from the listing (key, lease), a
// few at a time, so that values nobody reads (however many, however
// large) cost nothing. It returns the listing, the values fetched and the
// revision read.
func (e *Rendezvous) readRun(ctx context.Context, rev int64, want func(kv *mvccpb.KeyValue) bool) (keys, kvs []*mvccpb.KeyValue, at int64, err error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(maxKeysRead)}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := e.cli.Get(ctx, e.prefix, opts...)
	if err != nil {
		return nil, nil, 0, err
	}
	at = resp.Header.Revision
	if rev > 0 {
		at = rev
	}
	if resp.More {
		e.warnIgnored(e.prefix, fmt.Errorf("the run holds more than %d keys: only the first %d are read", maxKeysRead, maxKeysRead))
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

// wantJoin selects the keys that joining round n reads: the round's join
// records on their nodes' leases, its members, the run's end.
func (e *Rendezvous) wantJoin(n int) func(kv *mvccpb.KeyValue) bool {
	return func(kv *mvccpb.KeyValue) bool {
		if string(kv.Key) == e.key("closed") {
			return true
		}
		rn, rest, ok := e.roundPart(kv)
		if !ok || rn != n {
			return false
		}
		id, isJoin := strings.CutPrefix(rest, "join/")
		return rest == "members" || isJoin && e.onOwnLease(id, kv)
	}
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

// wantRound selects the keys that watching round r reads: its failure,
// its members' done marks, join records of the next round on their nodes'
// leases, the run's end. (Its members' join keys need no value: the
// listing says whether they are there.)
func (e *Rendezvous) wantRound(r rendezvous.Round, isMember func(string) bool) func(kv *mvccpb.KeyValue) bool {
	return func(kv *mvccpb.KeyValue) bool {
		if string(kv.Key) == e.key("closed") {
			return true
		}
		rn, rest, ok := e.roundPart(kv)
		switch {
		case !ok:
			return false
		case rn == r.Number && rest == "fail":
			return true
		case rn == r.Number && strings.HasPrefix(rest, "done/"):
			return isMember(strings.TrimPrefix(rest, "done/"))
		case rn == r.Number+1 && strings.HasPrefix(rest, "join/"):
			return e.onOwnLease(strings.TrimPrefix(rest, "join/"), kv)
		}
		return false
	}
}

// joinsAt reads the verified join records of round n at revision rev.
func (e *Rendezvous) joinsAt(ctx context.Context, n int, rev int64) (map[string]joinRecord, error) {
	want := e.wantJoin(n)
	_, kvs, _, err := e.readRun(ctx, rev, func(kv *mvccpb.KeyValue) bool {
		_, rest, _ := e.roundPart(kv)
		return strings.HasPrefix(rest, "join/") && want(kv)
	})
	if err != nil {
		return nil, err
	}
	joined := map[string]joinRecord{}
	for _, kv := range kvs {
		_, rest, _ := e.roundPart(kv)
		id := strings.TrimPrefix(rest, "join/")
		if j, err := parseJoin(id, kv); err == nil {
			joined[id] = j
		}
	}
	return joined, nil
}

// verifyMembers verifies round n's members key kv against the nodes that
// had joined the round when it was written (joined, when it holds every
// member; else read at the key's revision).
func (e *Rendezvous) verifyMembers(ctx context.Context, n int, kv *mvccpb.KeyValue, joined map[string]joinRecord) (*members, error) {
	m, err := parseMembers(kv.Value, joined, e.cfg.MinNodes, e.cfg.MaxNodes)
	if err != nil {
		at, rerr := e.joinsAt(ctx, n, kv.ModRevision)
		if rerr != nil {
			return nil, rerr
		}
		m, err = parseMembers(kv.Value, at, e.cfg.MinNodes, e.cfg.MaxNodes)
	}
	if err != nil {
		return nil, err
	}
	if m.MinNodes != e.cfg.MinNodes || m.MaxNodes != e.cfg.MaxNodes {
		return nil, &NNodesError{RunID: e.cfg.RunID, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes,
			Addr: m.Nodes[0].Addr, OtherMin: m.MinNodes, OtherMax: m.MaxNodes}
	}
	return m, nil
}
