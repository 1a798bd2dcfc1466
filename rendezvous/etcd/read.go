package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// readBatch is how many values one request of a bounded read fetches.
const readBatch = 64

// readRun reads the keys from prefix on at revision rev (0: the newest) in a
// bounded way: it lists the keys alone (at most maxKeysRead), then fetches
// the values of those that want selects from the listing (key, lease), a
// batch at a time, so that values nobody reads (however many, however
// large) cost nothing. It returns the listing, the values fetched and the
// revision read.
func (e *Rendezvous) readRun(ctx context.Context, rev int64, prefix string, want func(kv *gateway.KeyValue) bool) (keys, kvs []*gateway.KeyValue, at int64, err error) {
	opts := []gateway.OpOption{gateway.WithPrefix(), gateway.WithKeysOnly(), gateway.WithLimit(maxKeysRead)}
	if rev > 0 {
		opts = append(opts, gateway.WithRev(rev))
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
		ops := make([]gateway.Op, len(batch))
		for i, k := range batch {
			ops[i] = gateway.OpGet(k, gateway.WithRev(at))
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
func (e *Rendezvous) roundPart(kv *gateway.KeyValue) (int, string, bool) {
	return e.parseRoundKey(string(kv.Key))
}

// onOwnLease reports whether the join key kv of node id is on the lease
// that the id names; it warns when not (its value is then never read).
func (e *Rendezvous) onOwnLease(id string, kv *gateway.KeyValue) bool {
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

// parseRoundID splits rest ("join/<id>", "done/<id>") of a round's key.
func parseRoundID(rest, kind string) (string, bool) {
	return strings.CutPrefix(rest, kind+"/")
}
