package etcd

import (
	"context"

	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// watchSpec is one key, or one prefix, that a node watches.
type watchSpec struct {
	key    string
	prefix bool
	end    string // a range's end; "" a key, or a prefix
	// noPut, noDelete: etcd leaves out those events (of keys whose puts,
	// or deletes, tell this node nothing).
	noPut, noDelete bool
}

// watchKeys watches the keys specs name on one stream, so that their
// events come in the order etcd committed them. With rev 0 it returns once
// etcd has created every watch, so that a read after it misses no change
// (a watch from an older revision would do without the read, but etcd
// catches up such watches only every 100 ms; one created first, with a
// read after it, is told of every change at once); else the watches start
// at revision rev.
// The channel closes when the watches have ended (ctx cancelled, or etcd
// refused or broke one: its last response carries the error).
func (e *Rendezvous) watchKeys(ctx context.Context, rev int64, specs ...watchSpec) (<-chan gateway.WatchResponse, error) {
	ops := make([]gateway.Op, len(specs))
	for i, s := range specs {
		opts := []gateway.OpOption{}
		if s.prefix {
			opts = append(opts, gateway.WithPrefix())
		}
		if s.end != "" {
			opts = append(opts, gateway.WithRange(s.end))
		}
		if s.noPut {
			opts = append(opts, gateway.WithFilterPut())
		}
		if s.noDelete {
			opts = append(opts, gateway.WithFilterDelete())
		}
		if rev > 0 {
			opts = append(opts, gateway.WithRev(rev))
		} else {
			opts = append(opts, gateway.WithCreatedNotify())
		}
		ops[i] = gateway.OpGet(s.key, opts...)
	}
	ch := e.cli.WatchOps(gateway.WithRequireLeader(ctx), ops...)
	if rev == 0 {
		select {
		case wr, ok := <-ch:
			if !ok {
				return nil, ctx.Err()
			}
			if err := wr.Err(); err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return ch, nil
}
