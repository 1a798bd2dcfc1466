package etcd

import (
	"context"
	"fmt"
	"strings"

	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// Node status records: status/<node id> under the run's prefix, on the
// node's lease (gone within the TTL when its launcher dies): a summary of
// the node's ranks that mpspawn status shows on every node. The
// rendezvous never reads them for itself.

// MaxStatus bounds one node's status record, written or read.
const MaxStatus = 256 << 10

// maxStatuses bounds how many node statuses StatusRecords reads.
const maxStatuses = 1024

// statusBatch is how many status values one request fetches.
const statusBatch = 16

// PublishStatus puts this node's status summary (at most MaxStatus bytes)
// on its lease, replacing the last.
func (e *Rendezvous) PublishStatus(ctx context.Context, summary []byte) error {
	if len(summary) > MaxStatus {
		return fmt.Errorf("rendezvous: publish status: %d bytes, over %d", len(summary), MaxStatus)
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	if _, err := e.cli.Put(ctx, e.key("status", e.self.ID), string(summary), gateway.WithLease(e.lease)); err != nil {
		return fmt.Errorf("rendezvous: publish status: %w", err)
	}
	return nil
}

// StatusRecords returns the status records of the run's nodes that are
// alive (this one's included), by node id: at most 1024, each at most
// MaxStatus bytes (a larger one is left out), each on the lease its node
// id names. Their content is the caller's to verify.
func (e *Rendezvous) StatusRecords(ctx context.Context) ([][]byte, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	return readStatuses(ctx, e.cli, e.key("status", ""))
}

// ReadStatus returns the status records of run cfg.RunID (as
// StatusRecords does) without joining the run: for mpspawn status on a
// machine outside the job. It reads with cfg's endpoints, TLS and
// credentials (and, when cfg.Server is set, first checks that the server
// is the run's, as New does); it fails within cfg.ConnectTimeout with a
// *ConnectError (or a *ServerError) when etcd does not answer (or is not
// the run's).
func ReadStatus(ctx context.Context, cfg Config) ([][]byte, error) {
	cfg.defaults()
	if cfg.Server != nil {
		if err := waitServer(ctx, &cfg); err != nil {
			return nil, err
		}
	}
	cli, err := gateway.New(clientConfig(&cfg))
	if err != nil {
		return nil, &ConnectError{Endpoints: cfg.Endpoints, Timeout: cfg.ConnectTimeout, Err: err}
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	recs, err := readStatuses(ctx, cli, cfg.Prefix+cfg.RunID+"/status/")
	if err != nil && ctx.Err() != nil {
		return nil, &ConnectError{Endpoints: cfg.Endpoints, Timeout: cfg.ConnectTimeout, Err: err}
	}
	return recs, err
}

// readStatuses reads the status records under prefix in a bounded way:
// the keys alone first (at most maxStatuses), then the values of those on
// the lease their node id names, a few at a time, at the listing's
// revision; a value over MaxStatus is left out.
func readStatuses(ctx context.Context, cli *gateway.Client, prefix string) ([][]byte, error) {
	resp, err := cli.Get(ctx, prefix, gateway.WithPrefix(), gateway.WithKeysOnly(), gateway.WithLimit(maxStatuses),
		gateway.WithSort(gateway.SortByKey, gateway.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("rendezvous: read statuses: %w", err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), prefix)
		if kv.Lease != 0 && kv.Lease == leaseOf(id) {
			keys = append(keys, string(kv.Key))
		}
	}
	var out [][]byte
	for len(keys) > 0 {
		batch := keys[:min(statusBatch, len(keys))]
		keys = keys[len(batch):]
		ops := make([]gateway.Op, len(batch))
		for i, k := range batch {
			ops[i] = gateway.OpGet(k, gateway.WithRev(resp.Header.Revision))
		}
		tresp, err := cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("rendezvous: read statuses: %w", err)
		}
		for _, r := range tresp.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				if len(kv.Value) <= MaxStatus {
					out = append(out, kv.Value)
				}
			}
		}
	}
	return out, nil
}
