package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// End closes the run with status unless it is closed already. The run's
// keys go with it: "closed" (with the round's failure, which it vouches
// for) lives on a lease of its own for tombTTL, so that a node arriving
// late is told the run ended; the keys on no lease (members) are deleted;
// the rest are on the nodes' leases and go with them. Ending as
// "succeeded" a run that another node closed otherwise, or that could
// not be closed, is a *rendezvous.UnconfirmedError.
func (e *Rendezvous) End(ctx context.Context, status string) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	closed, err := e.close(ctx, status)
	switch {
	case err != nil && status == "succeeded":
		return &rendezvous.UnconfirmedError{What: "that the run closed as succeeded", Err: e.lostOr(err)}
	case err != nil:
		return fmt.Errorf("rendezvous: close run %s: %w", e.cfg.RunID, e.lostOr(err))
	case status == "succeeded" && closed != status:
		return &rendezvous.UnconfirmedError{What: fmt.Sprintf("the job's success: another node closed the run as %.64q", closed)}
	}
	if err := e.deleteLeaseless(ctx); err != nil {
		return e.lostOr(err)
	}
	return nil
}

// close writes the run's "closed" record unless there is one, and returns
// the status it holds.
func (e *Rendezvous) close(ctx context.Context, status string) (string, error) {
	k := e.key("closed")
	tomb, err := e.cli.Grant(ctx, int64(e.tombTTL()/time.Second))
	if err != nil {
		return "", err
	}
	ops := []gateway.Op{gateway.OpPut(k, status, gateway.WithLease(tomb.ID))}
	if e.round >= 0 {
		fk := e.roundKey(e.round, "fail")
		if resp, err := e.cli.Get(ctx, fk); err == nil && len(resp.Kvs) > 0 {
			if _, err := e.parseFailure(ctx, resp.Kvs[0], e.mem, e.round, 0); err == nil {
				ops = append(ops, gateway.OpPut(fk, string(resp.Kvs[0].Value), gateway.WithLease(tomb.ID)))
			}
		}
	}
	resp, err := e.cli.Txn(ctx).If(gateway.Compare(gateway.CreateRevision(k), "=", 0)).Then(ops...).Else(gateway.OpGet(k)).Commit()
	if err != nil {
		return "", err
	}
	if resp.Succeeded {
		return status, nil
	}
	_ = e.cli.Revoke(ctx, tomb.ID)
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		return string(kvs[0].Value), nil
	}
	return "", nil // gone since (its lease ended): not a success this node saw
}

// lostOr is the *LostError when the lease is lost (what ended err's
// call), else err.
func (e *Rendezvous) lostOr(err error) error {
	if err != nil && e.leaseLost.Load() {
		return e.lostError()
	}
	return err
}

// tombTTL is how long the record of a closed run stays: long enough for
// every node of the run to see it (close_timeout and a lease TTL, or a
// minute).
func (e *Rendezvous) tombTTL() time.Duration {
	return max(e.cfg.CloseTimeout+2*e.cfg.LeaseTTL, time.Minute).Round(time.Second)
}

// deleteLeaseless deletes the run's keys that are on no lease, a batch
// at a time.
func (e *Rendezvous) deleteLeaseless(ctx context.Context) error {
	keys, _, _, err := e.readRun(ctx, 0, e.prefix, func(*gateway.KeyValue) bool { return false })
	if err != nil {
		return fmt.Errorf("rendezvous: clean up run %s: %w", e.cfg.RunID, err)
	}
	var ops []gateway.Op
	for _, kv := range keys {
		if kv.Lease == 0 {
			// Only if it is still on no lease: a key written again since
			// the read is someone else's to remove.
			ops = append(ops, gateway.OpTxn([]gateway.Cmp{gateway.Compare(gateway.ModRevision(string(kv.Key)), "=", kv.ModRevision)},
				[]gateway.Op{gateway.OpDelete(string(kv.Key))}, nil))
		}
	}
	for len(ops) > 0 {
		batch := ops[:min(64, len(ops))]
		ops = ops[len(batch):]
		if _, err := e.cli.Txn(ctx).Then(batch...).Commit(); err != nil {
			return fmt.Errorf("rendezvous: clean up run %s: %w", e.cfg.RunID, err)
		}
	}
	return nil
}

// Fail publishes f as the current round's failure unless one is there
// already, and returns the one that is.
func (e *Rendezvous) Fail(ctx context.Context, f rendezvous.Failure) (rendezvous.Failure, error) {
	if e.round < 0 {
		return f, nil
	}
	if e.cur != nil {
		f.NodeRank = e.cur.nodeRank
	}
	f.Host, f.Addr = e.self.Host, e.self.Addr
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	first, err := e.publishFailure(ctx, e.last, e.mem, f)
	return first, e.lostOr(err)
}

// publishFailure writes f as round r's failure, on this node's lease, unless
// the round has one: it then returns that one. A failure record that fails
// verification does not count: f is written over it.
func (e *Rendezvous) publishFailure(ctx context.Context, r rendezvous.Round, m *members, f rendezvous.Failure) (rendezvous.Failure, error) {
	k := e.roundKey(r.Number, "fail")
	f.Message = truncateMessage(f.Message)
	b, err := json.Marshal(f)
	if err != nil {
		return rendezvous.Failure{}, err
	}
	var bad int64 // the revision of a record that failed verification
	for range 3 {
		resp, err := e.cli.Txn(ctx).If(gateway.Compare(gateway.ModRevision(k), "=", bad)).
			Then(gateway.OpPut(k, string(b), gateway.WithLease(e.lease))).Else(gateway.OpGet(k)).Commit()
		if err != nil {
			return f, fmt.Errorf("rendezvous: publish failure: %w", err)
		}
		if resp.Succeeded {
			return f, nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			bad = 0
			continue
		}
		first, err := e.parseFailure(ctx, kvs[0], m, r.Number, 0)
		if err == nil {
			return first, nil
		}
		e.warnIgnored(k, err)
		bad = kvs[0].ModRevision
	}
	return f, fmt.Errorf("rendezvous: publish failure: round %d's failure record keeps changing", r.Number)
}

// Stopped returns the current round's stop channel; nil between rounds.
func (e *Rendezvous) Stopped() <-chan rendezvous.Stop {
	if e.cur == nil {
		return nil
	}
	return e.cur.stopc
}

// Finish marks this node done in the current round, on its lease, and
// waits, bounded by CloseTimeout, for every other node to be done, or for
// the round's stop. Marking the node done counts against the same bound.
// When it cannot learn that every node is done (the bound spent, etcd
// lost: then at once), it returns a *rendezvous.UnconfirmedError.
func (e *Rendezvous) Finish(ctx context.Context) (*rendezvous.Stop, error) {
	w := e.cur
	if w == nil {
		return nil, nil
	}
	deadline := time.Now().Add(e.cfg.CloseTimeout)
	pctx, cancel := e.opCtx(ctx)
	pctx, cancel2 := context.WithDeadline(pctx, deadline)
	_, err := e.cli.Put(pctx, e.roundKey(e.round, "done", e.self.ID), "", gateway.WithLease(e.lease))
	cancel2()
	cancel()
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		return nil, &rendezvous.UnconfirmedError{What: "that the other nodes succeeded: could not tell them this node's ranks did", Err: e.boundOr(err)}
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	// The stop itself may have been taken from Stopped already (by the
	// caller cancelling ranks that had all succeeded by then): wait on
	// the round's record of it instead.
	stopped := w.stopped
	for {
		select {
		case <-w.allDone:
			// The round is over: nothing this node could hear of it
			// changes the verdict (End confirms the run's close).
			e.stopWatch()
			return nil, nil
		case <-stopped:
			if s := w.first; s.Failure != nil || s.Reason == rendezvous.ReasonClosed {
				return &s, nil
			}
			// A node waiting to join: this node has finished; the others
			// decide.
			stopped = nil
		case <-e.lost:
			return nil, &rendezvous.UnconfirmedError{What: "that the other nodes succeeded", Err: e.lostError()}
		case <-t.C:
			return nil, &rendezvous.UnconfirmedError{What: fmt.Sprintf("that the other nodes succeeded: some were still running after %v (close_timeout)", e.cfg.CloseTimeout)}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// boundOr is the *LostError when the lease is lost, an error naming
// close_timeout when err is that bound spent, else err.
func (e *Rendezvous) boundOr(err error) error {
	if e.leaseLost.Load() {
		return e.lostError()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer from etcd within %v (close_timeout)", e.cfg.CloseTimeout)
	}
	return err
}

// WaitLeft waits, bounded by ctx, until every other node has left the run
// (its lease is gone): the node that hosts the etcd server stops it only
// then, so that no node loses etcd while it closes.
func (e *Rendezvous) WaitLeft(ctx context.Context) {
	if e.round < 0 || e.leaseLost.Load() {
		return
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	prefix := e.roundKey(e.round, "join") + "/"
	resp, err := e.cli.Get(ctx, prefix, gateway.WithPrefix(), gateway.WithKeysOnly())
	if err != nil {
		return
	}
	left := map[string]bool{}
	for _, kv := range resp.Kvs {
		if id := strings.TrimPrefix(string(kv.Key), prefix); id != e.self.ID {
			left[id] = true
		}
	}
	if len(left) == 0 {
		return
	}
	for wr := range e.cli.Watch(ctx, prefix, gateway.WithPrefix(), gateway.WithRev(resp.Header.Revision+1)) {
		for _, ev := range wr.Events {
			if ev.Type == gateway.EventTypeDelete {
				delete(left, strings.TrimPrefix(string(ev.Kv.Key), prefix))
			}
		}
		if len(left) == 0 || wr.Err() != nil {
			return
		}
	}
}
