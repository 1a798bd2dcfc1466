package etcd

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Node status records: status/<node id> under the run's prefix, on the
// node's lease (gone within the TTL when its launcher dies): a summary of
// the node's ranks that mpspawn status shows on every node. The
// rendezvous never reads them for itself.

// MaxStatus bounds one node's status record, written or read.
const MaxStatus = 256 << 10

// maxStatuses bounds how many node statuses StatusRecords reads.
const maxStatuses = 1024

// PublishStatus puts this node's status summary (at most MaxStatus bytes)
// on its lease, replacing the last.
func (e *Rendezvous) PublishStatus(ctx context.Context, summary []byte) error {
	if len(summary) > MaxStatus {
		return fmt.Errorf("rendezvous: publish status: %d bytes, over %d", len(summary), MaxStatus)
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	if _, err := e.cli.Put(ctx, e.key("status", e.self.ID), string(summary), clientv3.WithLease(e.lease)); err != nil {
		return fmt.Errorf("rendezvous: publish status: %w", err)
	}
	return nil
}

// StatusRecords returns the status records of the run's nodes that are
// alive (this one's included), by node id: at most 1024, each at most
// MaxStatus bytes (a larger one is left out). Their content is the
// caller's to verify.
func (e *Rendezvous) StatusRecords(ctx context.Context) ([][]byte, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, e.key("status", ""), clientv3.WithPrefix(), clientv3.WithLimit(maxStatuses),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("rendezvous: read statuses: %w", err)
	}
	var out [][]byte
	for _, kv := range resp.Kvs {
		if len(kv.Value) <= MaxStatus && kv.Lease != 0 {
			out = append(out, kv.Value)
		}
	}
	return out, nil
}
