package etcd

import (
	"context"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
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

// watchKeys watches the keys specs name on one channel. With rev 0 it
// returns once etcd has created every watch, so that a read after it
// misses no change (a watch from an older revision would do without the
// read, but etcd catches up such watches only every 100 ms; one created
// first, with a read after it, is told of every change at once); else the
// watches start at revision rev.
// The channel closes when every watch has ended (ctx cancelled, or etcd
// refused or broke one: its last response carries the error).
func (e *Rendezvous) watchKeys(ctx context.Context, rev int64, specs ...watchSpec) (<-chan clientv3.WatchResponse, error) {
	chans := make([]clientv3.WatchChan, len(specs))
	for i, s := range specs {
		opts := []clientv3.OpOption{}
		if s.prefix {
			opts = append(opts, clientv3.WithPrefix())
		}
		if s.end != "" {
			opts = append(opts, clientv3.WithRange(s.end))
		}
		if s.noPut {
			opts = append(opts, clientv3.WithFilterPut())
		}
		if s.noDelete {
			opts = append(opts, clientv3.WithFilterDelete())
		}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		} else {
			opts = append(opts, clientv3.WithCreatedNotify())
		}
		chans[i] = e.cli.Watch(clientv3.WithRequireLeader(ctx), s.key, opts...)
	}
	if rev == 0 {
		for _, ch := range chans {
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
	}
	out := make(chan clientv3.WatchResponse)
	var wg sync.WaitGroup
	for _, ch := range chans {
		wg.Go(func() {
			for wr := range ch {
				select {
				case out <- wr:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out, nil
}
