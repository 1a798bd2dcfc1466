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
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// roundWatch watches a started round for what ends it elsewhere: its
// failure, a member's lease going (a lost node), a node joining the next
// round while the job is below MaxNodes, the run's end. It owns one
// goroutine, stopped by stopWatch.
type roundWatch struct {
	round    rendezvous.Round
	nodeRank int
	stopc    chan rendezvous.Stop // receives once: Stopped's reader takes it
	stopped  chan struct{}        // closed once first is set: any number of readers
	first    rendezvous.Stop      // the round's stop, once stopped is closed
	allDone  chan struct{}        // closed once every member is done
	cancel   context.CancelFunc
	done     chan struct{}

	stopOnce sync.Once
	// owned by the watch goroutine
	members map[string]rendezvous.Node
	isDone  map[string]bool
	failed  bool

	allDoneClosed bool
}

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
		round: r, nodeRank: r.NodeRank,
		stopc: make(chan rendezvous.Stop, 1), stopped: make(chan struct{}), allDone: make(chan struct{}),
		cancel: cancel, done: make(chan struct{}),
		members: map[string]rendezvous.Node{}, isDone: map[string]bool{},
	}
	for _, n := range r.Hosts {
		w.members[n.ID] = n
	}
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

// watch follows the run's keys for round w from revision rev (0: read
// them first). A broken watch (etcd restarting) resumes from the last
// revision seen; one that cannot resume because etcd compacted its history
// past that revision reads the keys again instead, so that no change in
// between goes unseen.
func (e *Rendezvous) watch(ctx context.Context, w *roundWatch, rev int64) {
	var events clientv3.WatchChan
	floor := rev - 1 // changes up to here are known
	for ctx.Err() == nil {
		if rev == 0 {
			if events, floor = e.readRound(ctx, w); ctx.Err() != nil {
				return
			}
			rev = floor + 1
		}
		if events == nil {
			events = e.cli.Watch(clientv3.WithRequireLeader(ctx), e.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
		}
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
				e.applyRound(ctx, w, ev.Kv, ev.Type == clientv3.EventTypeDelete)
				rev = max(rev, ev.Kv.ModRevision+1)
			}
		}
		events = nil
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

// readRound starts a watch, then reads the run's keys (bounded: see
// readRun) and applies them to round w; it returns the watch (nil if etcd
// refused it: the caller makes one) and the revision of the read, which
// the watch's events up to are already applied.
func (e *Rendezvous) readRound(ctx context.Context, w *roundWatch) (clientv3.WatchChan, int64) {
	isMember := func(id string) bool { _, ok := w.members[id]; return ok }
	want := e.wantRound(w.round, isMember)
	events, err := e.syncedWatch(ctx)
	var keys, kvs []*mvccpb.KeyValue
	var rev int64
	if err == nil {
		keys, kvs, rev, err = e.readRun(ctx, 0, want)
	}
	for err != nil { // etcd away: read again
		if ctx.Err() != nil {
			return nil, 0
		}
		events = nil
		keys, kvs, rev, err = e.readRun(ctx, 0, want)
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
		if k := e.roundKey(w.round.Number, "join", id); !present[k] {
			e.applyRound(ctx, w, &mvccpb.KeyValue{Key: []byte(k)}, true)
		}
	}
	return events, rev
}

// applyRound applies one key of the run to the watched round. A key that
// fails verification is ignored with a warning.
func (e *Rendezvous) applyRound(ctx context.Context, w *roundWatch, kv *mvccpb.KeyValue, deleted bool) {
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
		if w.failed {
			return // the round's failure is known (the run's closer writes it again)
		}
		f, err := parseFailure(kv, w.round, 0)
		if err != nil {
			e.warnIgnored(key, err)
			return
		}
		w.failed = true
		w.stop(rendezvous.Stop{Failure: &f})
	case rn == n && strings.HasPrefix(rest, "done/") && !deleted:
		id := strings.TrimPrefix(rest, "done/")
		if _, member := w.members[id]; !member || len(kv.Value) != 0 || kv.Lease != leaseOf(id) {
			e.warnIgnored(key, errors.New("not a member's done mark (on its lease)"))
			return
		}
		w.isDone[id] = true
		if !w.allDoneClosed && len(w.isDone) >= len(w.members) && w.allMembersDone() {
			w.allDoneClosed = true // keys read again (compacted history) apply again
			close(w.allDone)
		}
	case rn == n && strings.HasPrefix(rest, "join/") && deleted:
		e.memberGone(ctx, w, strings.TrimPrefix(rest, "join/"))
	case rn == n+1 && strings.HasPrefix(rest, "join/") && !deleted:
		id := strings.TrimPrefix(rest, "join/")
		if _, member := w.members[id]; member || w.failed || len(w.members) >= e.cfg.MaxNodes {
			return
		}
		j, err := parseJoin(id, kv)
		if err == nil && (j.MinNodes != e.cfg.MinNodes || j.MaxNodes != e.cfg.MaxNodes) {
			err = fmt.Errorf("node %s wants %s nodes, this job %s", j.Addr, nodesSpec(j.MinNodes, j.MaxNodes), nodesSpec(e.cfg.MinNodes, e.cfg.MaxNodes))
		}
		if err != nil {
			e.warnIgnored(key, err)
			return
		}
		w.stop(rendezvous.Stop{Reason: fmt.Sprintf("node %s is waiting to join", j.Addr)})
	}
}

// applyClosed ends the watched round for the run's end: the run failed
// and closed in one go when the round has a failure, which is then the
// reason (the node that closed the run vouches for it).
func (e *Rendezvous) applyClosed(ctx context.Context, w *roundWatch, kv *mvccpb.KeyValue) {
	if len(kv.Value) > maxClosedValue {
		e.warnIgnored(string(kv.Key), fmt.Errorf("value of %d bytes, over the %d allowed", len(kv.Value), maxClosedValue))
	}
	k := e.roundKey(w.round.Number, "fail")
	if resp, err := e.cli.Get(ctx, k); err == nil && len(resp.Kvs) > 0 {
		f, err := parseFailure(resp.Kvs[0], w.round, kv.Lease)
		if err == nil {
			w.failed = true
			w.stop(rendezvous.Stop{Failure: &f})
			return
		}
		e.warnIgnored(k, err)
	}
	w.stop(rendezvous.Stop{Reason: rendezvous.ReasonClosed})
}

// memberGone handles the join key of node id going: a member that goes
// before it is done, while the round has no failure, is lost.
func (e *Rendezvous) memberGone(ctx context.Context, w *roundWatch, id string) {
	node, member := w.members[id]
	if !member || w.isDone[id] || w.failed || e.leaseLost.Load() {
		return
	}
	select {
	case <-w.stopped:
		return // the round has ended (the run was closed, say): nodes leave
	default:
	}
	rank := slices.IndexFunc(w.round.Hosts, func(h rendezvous.Node) bool { return h.ID == id })
	f := rendezvous.Failure{NodeRank: rank, Host: node.Host, Addr: node.Addr, Rank: -1, LocalRank: -1,
		ExitCode: rendezvous.LostExitCode, Lost: true, Time: time.Now(),
		Message: fmt.Sprintf("its etcd lease expired (its launcher died, or lost etcd for longer than the lease TTL %v)", e.cfg.LeaseTTL)}
	if first, err := e.publishFailure(ctx, w.round, f); err == nil {
		f = first
	}
	w.failed = true
	w.stop(rendezvous.Stop{Failure: &f})
}

func (w *roundWatch) allMembersDone() bool {
	for id := range w.members {
		if !w.isDone[id] {
			return false
		}
	}
	select {
	case <-w.allDone:
		return false // closed already
	default:
	}
	return true
}
