package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// roundWatch watches a started round for what ends it elsewhere: its
// failure, a member's lease going (a lost node), a node joining the next
// round while the job is below MaxNodes, the run's end. Node rank 0, the
// round's aggregator, watches the members' join and done keys and the
// next round's joins, and publishes what every node must hear as one key
// each (flag/alldone, flag/change, or the round's fail); every other node
// watches those, the round's fail, the run's end, the aggregator's join
// key (its loss) and its own done key: a few events a node, whatever the
// number of nodes. It owns one goroutine, stopped by stopWatch.
type roundWatch struct {
	round    rendezvous.Round
	nodeRank int
	agg      string               // the aggregator's id
	m        *members             // the round's members
	stopc    chan rendezvous.Stop // receives once: Stopped's reader takes it
	stopped  chan struct{}        // closed once first is set: any number of readers
	first    rendezvous.Stop      // the round's stop, once stopped is closed
	allDone  chan struct{}        // closed once every member is done
	ready    chan struct{}        // closed once the watch is in place
	cancel   context.CancelFunc
	done     chan struct{}

	stopOnce  sync.Once
	readyOnce sync.Once
	// owned by the watch goroutine
	members   map[string]rendezvous.Node
	isDone    map[string]bool
	doneCount int
	failed    bool
	// solo is set once the aggregator left done before every member was
	// (its close_timeout spent): this node then follows the members'
	// done marks and leases itself, as the aggregator did, publishing
	// nothing (O(N) events a node, but only in that case); rewatch asks
	// the watch to start again so.
	solo, rewatch bool

	allDoneClosed bool
}

// addMembers fills the members w follows: every one at the aggregator
// (and solo), else the aggregator and this node (an O(N) map a node would
// cost O(N²) in a simulation of N nodes, for nothing).
func (w *roundWatch) addMembers(e *Rendezvous) {
	if w.isAgg(e) {
		for _, n := range w.round.Hosts {
			w.members[n.ID] = n
		}
		return
	}
	w.members[w.agg] = w.m.Node0
	w.members[e.self.ID] = e.self
}

// isAgg reports whether this node follows the members' keys itself.
func (w *roundWatch) isAgg(e *Rendezvous) bool { return w.agg == e.self.ID || w.solo }

// watchRound starts watching round r: it reads the run's keys, then
// follows their changes from the revision after that read.
func (e *Rendezvous) watchRound(r rendezvous.Round) *roundWatch {
	return e.watchRoundFrom(r, 0)
}

// watchRoundFrom is watchRound resuming a watch at revision rev, as after a
// broken watch; rev 0 reads the keys first.
func (e *Rendezvous) watchRoundFrom(r rendezvous.Round, rev int64) *roundWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &roundWatch{
		round: r, nodeRank: r.NodeRank, agg: e.mem.Node0.ID, m: e.mem,
		stopc: make(chan rendezvous.Stop, 1), stopped: make(chan struct{}), allDone: make(chan struct{}),
		ready: make(chan struct{}), cancel: cancel, done: make(chan struct{}),
		members: map[string]rendezvous.Node{}, isDone: map[string]bool{},
	}
	w.addMembers(e)
	var wg sync.WaitGroup
	wg.Go(func() { e.watch(ctx, w, rev) })
	wg.Go(func() { e.watchLost(ctx, w) })
	go func() {
		wg.Wait()
		close(w.done)
	}()
	return w
}

// watchLost waits for the lease's loss during round w. With the etcd
// server on a node of the job (LossStopsRound), that is the node's loss:
// the round stops. Else the ranks carry on, and a warning says that this
// node can no longer confirm the job's result.
func (e *Rendezvous) watchLost(ctx context.Context, w *roundWatch) {
	select {
	case <-ctx.Done():
		return
	case <-e.lost:
	}
	if !e.cfg.LossStopsRound {
		fmt.Fprintf(e.cfg.Notes, "mpspawn: warning: rendezvous %s: lost the etcd lease (etcd unreachable for longer than the lease TTL %v); the ranks carry on, but this node can no longer confirm the job's result: it will exit non-zero\n", e.cfg.RunID, e.cfg.LeaseTTL)
		return
	}
	f := rendezvous.Failure{NodeRank: -1, Rank: -1, LocalRank: -1, ExitCode: rendezvous.LostExitCode, Lost: true, Time: time.Now(),
		Addr:    strings.Join(e.cfg.Endpoints, ","),
		Message: fmt.Sprintf("the etcd server at %s, which a node of the job hosts, unreachable for longer than the lease TTL %v: that node is gone or cut off", strings.Join(e.cfg.Endpoints, ","), e.cfg.LeaseTTL)}
	w.stop(rendezvous.Stop{Failure: &f})
}

// stopWatch stops the current round's watcher and waits for it.
func (e *Rendezvous) stopWatch() {
	if e.cur == nil {
		return
	}
	e.cur.cancel()
	<-e.cur.done
	e.cur = nil
}

func (w *roundWatch) stop(s rendezvous.Stop) {
	w.stopOnce.Do(func() {
		w.first = s
		close(w.stopped)
		w.stopc <- s
	})
}

// watch follows round w's keys from revision rev (0: read them first). A
// broken watch (etcd restarting) resumes from the last revision seen; one
// that cannot resume because etcd compacted its history past that
// revision reads the keys again instead, so that no change in between
// goes unseen.
func (e *Rendezvous) watch(ctx context.Context, w *roundWatch, rev int64) {
	defer w.readyOnce.Do(func() { close(w.ready) })
	floor := rev - 1 // changes up to here are known
	for ctx.Err() == nil {
		actx, acancel := context.WithCancel(ctx)
		var events <-chan gateway.WatchResponse
		if rev == 0 {
			events, floor = e.readRound(actx, w)
			rev = floor + 1
		} else {
			events, _ = e.watchKeys(actx, rev, e.roundSpecs(w)...)
		}
		w.readyOnce.Do(func() { close(w.ready) })
		for wr := range events {
			if wr.CompactRevision != 0 {
				rev = 0 // the history from rev is gone: read the keys again
				break
			}
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision <= floor {
					continue
				}
				e.applyRound(ctx, w, ev.Kv, ev.Type == gateway.EventTypeDelete)
				rev = max(rev, ev.Kv.ModRevision+1)
			}
			if w.rewatch {
				w.rewatch, rev = false, 0
				break
			}
		}
		acancel()
		if ctx.Err() == nil {
			// Not a spin: the client waits for a connection before the
			// next watch answers.
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// roundSpecs are the keys that watching round w follows.
func (e *Rendezvous) roundSpecs(w *roundWatch) []watchSpec {
	n := w.round.Number
	// The round's fail and the aggregator's flag/ keys are one range.
	fail := watchSpec{key: e.roundKey(n, "fail"), end: e.roundKey(n, "flag0"), noDelete: true}
	specs := []watchSpec{fail, {key: e.key("closed"), noDelete: true}}
	if w.isAgg(e) {
		return append(specs,
			watchSpec{key: e.roundKey(n, "done") + "/", prefix: true, noDelete: true},
			watchSpec{key: e.roundKey(n, "join") + "/", prefix: true, noPut: true},
			watchSpec{key: e.roundKey(n+1, "join") + "/", prefix: true, noDelete: true})
	}
	return append(specs,
		watchSpec{key: e.roundKey(n, "done", e.self.ID), noDelete: true},
		watchSpec{key: e.roundKey(n, "join", w.agg), noPut: true})
}

// readRound reads the keys round w's watches follow (bounded: see
// readRun), applies them, and starts the watches from the revision after
// the read (etcd may take up to 100 ms to catch such a watch up, but the
// node need not wait for each watch's creation). It returns the watch (nil
// if etcd refused it: the caller makes one) and the revision of the read.
func (e *Rendezvous) readRound(ctx context.Context, w *roundWatch) (<-chan gateway.WatchResponse, int64) {
	keys, kvs, rev, err := e.readRoundKeys(ctx, w)
	for err != nil { // etcd away: read again
		select {
		case <-ctx.Done():
			return nil, 0
		case <-time.After(10 * time.Millisecond):
		}
		keys, kvs, rev, err = e.readRoundKeys(ctx, w)
	}
	present := map[string]bool{}
	for _, kv := range keys {
		present[string(kv.Key)] = true
	}
	for _, kv := range kvs {
		e.applyRound(ctx, w, kv, false)
	}
	for id := range w.members {
		// A member lost between the round's start and this read.
		if k := e.roundKey(w.round.Number, "join", id); !present[k] && (id == w.agg || w.isAgg(e)) {
			e.applyRound(ctx, w, &gateway.KeyValue{Key: []byte(k)}, true)
		}
	}
	w.readyOnce.Do(func() { close(w.ready) })
	events, _ := e.watchKeys(ctx, rev+1, e.roundSpecs(w)...)
	return events, rev
}

// readRoundKeys reads what round w's watches follow: for the aggregator,
// the round's keys and the next round's joins (the members' join keys
// listed only); for any other node, a few keys. keys are those whose
// presence counts (join keys), kvs those to apply.
func (e *Rendezvous) readRoundKeys(ctx context.Context, w *roundWatch) (keys, kvs []*gateway.KeyValue, rev int64, err error) {
	n := w.round.Number
	if !w.isAgg(e) {
		resp, err := e.cli.Txn(ctx).Then(gateway.OpGet(e.roundKey(n, "fail")), gateway.OpGet(e.key("closed")),
			gateway.OpGet(e.roundKey(n, "flag")+"/", gateway.WithPrefix()), gateway.OpGet(e.roundKey(n, "done", e.self.ID)),
			gateway.OpGet(e.roundKey(n, "join", w.agg), gateway.WithKeysOnly())).Commit()
		if err != nil {
			return nil, nil, 0, err
		}
		for i, r := range resp.Responses {
			if i == 4 {
				keys = r.GetResponseRange().Kvs
			} else {
				kvs = append(kvs, r.GetResponseRange().Kvs...)
			}
		}
		return keys, kvs, resp.Header.Revision, nil
	}
	keys, kvs, rev, err = e.readRun(ctx, 0, e.roundKey(n)+"/", e.wantRound(w))
	if err != nil {
		return nil, nil, 0, err
	}
	jp := e.roundKey(n+1, "join") + "/"
	_, next, _, err := e.readRun(ctx, rev, jp, func(kv *gateway.KeyValue) bool {
		return e.onOwnLease(strings.TrimPrefix(string(kv.Key), jp), kv)
	})
	if err != nil {
		return nil, nil, 0, err
	}
	resp, err := e.cli.Get(ctx, e.key("closed"), gateway.WithRev(rev))
	if err != nil {
		return nil, nil, 0, err
	}
	return keys, append(append(kvs, next...), resp.Kvs...), rev, nil
}

// wantRound selects the keys of its round whose values the aggregator
// reads: the failure, the members' done marks, and join records of
// non-members on their nodes' leases (read to warn of them; the members'
// need no value: the listing says whether they are there).
func (e *Rendezvous) wantRound(w *roundWatch) func(kv *gateway.KeyValue) bool {
	return func(kv *gateway.KeyValue) bool {
		_, rest, _ := e.roundPart(kv)
		if rest == "fail" {
			return true
		}
		if id, ok := parseRoundID(rest, "done"); ok {
			_, member := w.members[id]
			return member
		}
		if id, ok := parseRoundID(rest, "join"); ok {
			_, member := w.members[id]
			return !member && e.onOwnLease(id, kv)
		}
		return false
	}
}

// applyRound applies one key of the run to the watched round. A key that
// fails verification is ignored with a warning.
func (e *Rendezvous) applyRound(ctx context.Context, w *roundWatch, kv *gateway.KeyValue, deleted bool) {
	key := string(kv.Key)
	if key == e.key("closed") {
		if !deleted {
			e.applyClosed(ctx, w, kv)
		}
		return
	}
	rn, rest, ok := e.parseRoundKey(key)
	if !ok || deleted && rn != w.round.Number {
		return
	}
	n := w.round.Number
	switch {
	case rn == n && rest == "fail" && !deleted:
		e.applyFail(ctx, w, kv)
	case rn == n && strings.HasPrefix(rest, "flag/") && !deleted:
		e.applyFlag(w, kv, strings.TrimPrefix(rest, "flag/"))
	case rn == n && strings.HasPrefix(rest, "done/") && !deleted:
		e.applyDone(ctx, w, kv, strings.TrimPrefix(rest, "done/"))
	case rn == n && strings.HasPrefix(rest, "join/") && deleted:
		e.memberGone(ctx, w, strings.TrimPrefix(rest, "join/"), kv.ModRevision)
	case rn == n && strings.HasPrefix(rest, "join/") && w.isAgg(e):
		if id := strings.TrimPrefix(rest, "join/"); e.onOwnLease(id, kv) {
			if _, err := parseJoin(id, kv); err != nil {
				e.warnIgnored(key, err)
			}
		}
	case rn == n+1 && strings.HasPrefix(rest, "join/") && !deleted && w.isAgg(e):
		e.applyNextJoin(ctx, w, kv, strings.TrimPrefix(rest, "join/"))
	}
}

func (e *Rendezvous) applyFail(ctx context.Context, w *roundWatch, kv *gateway.KeyValue) {
	if w.failed {
		return // the round's failure is known (the run's closer writes it again)
	}
	f, err := e.parseFailure(ctx, kv, w.m, w.round.Number, 0)
	if err != nil {
		e.warnIgnored(string(kv.Key), err)
		return
	}
	w.failed = true
	w.stop(rendezvous.Stop{Failure: &f})
}

// applyFlag applies a key the aggregator published: every member done
// (flag/alldone), or a node waiting to join the next round (flag/change,
// its address).
func (e *Rendezvous) applyFlag(w *roundWatch, kv *gateway.KeyValue, what string) {
	var err error
	switch {
	case kv.Lease == 0 || kv.Lease != leaseOf(w.agg):
		err = errors.New("not on the round's aggregator's lease")
	case what == "alldone" && len(kv.Value) == 0:
		w.closeAllDone()
		return
	case what == "change":
		addr := string(kv.Value)
		if err = checkName("addr", addr); err == nil {
			w.stop(rendezvous.Stop{Reason: fmt.Sprintf("node %s is waiting to join", addr)})
			return
		}
	default:
		err = errors.New("not a key of the round's aggregator")
	}
	e.warnIgnored(string(kv.Key), err)
}

// applyDone applies node id's done mark: the aggregator counts it and,
// once every member is done, publishes that; any other node watches only
// its own, to warn of one it did not write.
func (e *Rendezvous) applyDone(ctx context.Context, w *roundWatch, kv *gateway.KeyValue, id string) {
	if _, member := w.members[id]; !member || len(kv.Value) != 0 || kv.Lease != leaseOf(id) {
		e.warnIgnored(string(kv.Key), errors.New("not a member's done mark (on its lease)"))
		return
	}
	if !w.isAgg(e) || w.isDone[id] {
		return
	}
	w.isDone[id] = true
	w.doneCount++
	if w.doneCount == len(w.members) && !w.allDoneClosed {
		if !w.solo {
			// Best effort: a node that does not hear it stays unconfirmed.
			_, _ = e.cli.Put(ctx, e.roundKey(w.round.Number, "flag", "alldone"), "", gateway.WithLease(e.lease))
		}
		w.closeAllDone()
	}
}

// applyNextJoin applies, at the aggregator, node id's join record of the
// next round: a node waiting to join while the job is below MaxNodes
// stops the round, on every node (flag/change).
func (e *Rendezvous) applyNextJoin(ctx context.Context, w *roundWatch, kv *gateway.KeyValue, id string) {
	if _, member := w.members[id]; member || w.failed || len(w.members) >= e.cfg.MaxNodes {
		return
	}
	j, err := parseJoin(id, kv)
	if err == nil && (j.MinNodes != e.cfg.MinNodes || j.MaxNodes != e.cfg.MaxNodes) {
		err = fmt.Errorf("node %s wants %s nodes, this job %s", j.Addr, nodesSpec(j.MinNodes, j.MaxNodes), nodesSpec(e.cfg.MinNodes, e.cfg.MaxNodes))
	}
	if err != nil {
		e.warnIgnored(string(kv.Key), err)
		return
	}
	select {
	case <-w.stopped:
		return
	default:
	}
	if !w.solo {
		_, _ = e.cli.Put(ctx, e.roundKey(w.round.Number, "flag", "change"), j.Addr, gateway.WithLease(e.lease))
	}
	w.stop(rendezvous.Stop{Reason: fmt.Sprintf("node %s is waiting to join", j.Addr)})
}

func (w *roundWatch) closeAllDone() {
	if !w.allDoneClosed {
		w.allDoneClosed = true // keys read again (compacted history) apply again
		close(w.allDone)
	}
}

// applyClosed ends the watched round for the run's end: the run failed
// and closed in one go when the round has a failure, which is then the
// reason (the node that closed the run vouches for it).
func (e *Rendezvous) applyClosed(ctx context.Context, w *roundWatch, kv *gateway.KeyValue) {
	if len(kv.Value) > maxClosedValue {
		e.warnIgnored(string(kv.Key), fmt.Errorf("value of %d bytes, over the %d allowed", len(kv.Value), maxClosedValue))
	}
	k := e.roundKey(w.round.Number, "fail")
	if resp, err := e.cli.Get(ctx, k); err == nil && len(resp.Kvs) > 0 {
		f, err := e.parseFailure(ctx, resp.Kvs[0], w.m, w.round.Number, kv.Lease)
		if err == nil {
			w.failed = true
			w.stop(rendezvous.Stop{Failure: &f})
			return
		}
		e.warnIgnored(k, err)
	}
	if e.allDoneAt(ctx, w, kv.ModRevision) {
		// Every member was done when the run closed: the aggregator's
		// flag/alldone comes on another watch, and may come after.
		w.closeAllDone()
		return
	}
	w.stop(rendezvous.Stop{Reason: rendezvous.ReasonClosed})
}

// allDoneAt reads whether round w's aggregator had published that every
// member is done (flag/alldone, on its lease) at revision rev: the one
// that closed the run saw it before closing, and the aggregator, its
// lease gone since, may have taken it away with it.
func (e *Rendezvous) allDoneAt(ctx context.Context, w *roundWatch, rev int64) bool {
	resp, err := e.cli.Get(ctx, e.roundKey(w.round.Number, "flag", "alldone"), gateway.WithRev(rev))
	if err != nil {
		return false // compacted, or etcd gone: not confirmed
	}
	kvs := resp.Kvs
	return len(kvs) > 0 && kvs[0].Lease != 0 && kvs[0].Lease == leaseOf(w.agg) && len(kvs[0].Value) == 0
}

// memberGone handles the join key of node id going, at revision rev (0:
// unknown): a member that goes before it is done, while the round has no
// failure, is lost.
func (e *Rendezvous) memberGone(ctx context.Context, w *roundWatch, id string, rev int64) {
	node, member := w.members[id]
	if !member || w.isDone[id] || w.allDoneClosed || w.failed || e.leaseLost.Load() {
		return
	}
	select {
	case <-w.stopped:
		return // the round has ended (the run was closed, say): nodes leave
	default:
	}
	if id == w.agg && !w.isAgg(e) && rev > 1 && e.aggLeftDone(ctx, w, rev-1) {
		return
	}
	rank := slices.IndexFunc(w.round.Hosts, func(h rendezvous.Node) bool { return h.ID == id })
	if id == w.agg {
		rank = 0
	}
	f := rendezvous.Failure{NodeRank: rank, Host: node.Host, Addr: node.Addr, Rank: -1, LocalRank: -1,
		ExitCode: rendezvous.LostExitCode, Lost: true, Time: time.Now(),
		Message: fmt.Sprintf("its etcd lease expired (its launcher died, or lost etcd for longer than the lease TTL %v)", e.cfg.LeaseTTL)}
	if w.solo {
		// Every node following the members hears of it itself.
		w.failed = true
		w.stop(rendezvous.Stop{Failure: &f})
		return
	}
	if first, err := e.publishFailure(ctx, w.round, w.m, f); err == nil {
		f = first
	}
	w.failed = true
	w.stop(rendezvous.Stop{Failure: &f})
}

// aggLeftDone reads whether the aggregator, whose lease went after
// revision rev, left done: with every member done (its flag/alldone,
// which this node may not have heard yet), or alone done (its
// close_timeout spent), when this node follows the members itself from
// then on (solo).
func (e *Rendezvous) aggLeftDone(ctx context.Context, w *roundWatch, rev int64) bool {
	n := w.round.Number
	resp, err := e.cli.Txn(ctx).Then(gateway.OpGet(e.roundKey(n, "flag", "alldone"), gateway.WithRev(rev)),
		gateway.OpGet(e.roundKey(n, "done", w.agg), gateway.WithRev(rev))).Commit()
	if err != nil {
		return false
	}
	lease := leaseOf(w.agg)
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 && kvs[0].Lease == lease && len(kvs[0].Value) == 0 {
		w.closeAllDone()
		return true
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 && kvs[0].Lease == lease && len(kvs[0].Value) == 0 {
		w.isDone[w.agg] = true
		w.doneCount++
		nodes, err := w.m.all(ctx, e, n)
		if err != nil {
			return false
		}
		w.round.Hosts = nodes
		w.solo, w.rewatch = true, true
		w.addMembers(e)
		return true
	}
	return false
}
