package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous"
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
	go func() {
		defer close(w.done)
		e.watch(ctx, w, rev)
	}()
	return w
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
				e.applyRound(ctx, w, string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
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

// readRound starts a watch, then reads the run's keys and applies them to
// round w; it returns the watch (nil if etcd refused it: the caller makes
// one) and the revision of the read, which the watch's events up to are
// already applied.
func (e *Rendezvous) readRound(ctx context.Context, w *roundWatch) (clientv3.WatchChan, int64) {
	events, err := e.syncedWatch(ctx)
	var resp *clientv3.GetResponse
	if err == nil {
		resp, err = e.cli.Get(ctx, e.prefix, clientv3.WithPrefix())
	}
	for err != nil { // etcd away: read again
		if ctx.Err() != nil {
			return nil, 0
		}
		events = nil
		resp, err = e.cli.Get(ctx, e.prefix, clientv3.WithPrefix())
	}
	present := map[string]bool{}
	for _, kv := range resp.Kvs {
		e.applyRound(ctx, w, string(kv.Key), kv.Value, false)
		present[string(kv.Key)] = true
	}
	for id := range w.members {
		// A member lost between the round's start and this read.
		if k := e.roundKey(w.round.Number, "join", id); !present[k] {
			e.applyRound(ctx, w, k, nil, true)
		}
	}
	return events, resp.Header.Revision
}

// applyRound applies one key of the run to the watched round.
func (e *Rendezvous) applyRound(ctx context.Context, w *roundWatch, key string, value []byte, deleted bool) {
	n := w.round.Number
	if key == e.key("closed") && !deleted {
		// The run failed and closed in one go: the round's failure is
		// the reason, when it has one.
		if resp, err := e.cli.Get(ctx, e.roundKey(n, "fail")); err == nil && len(resp.Kvs) > 0 {
			var f rendezvous.Failure
			if json.Unmarshal(resp.Kvs[0].Value, &f) == nil {
				w.failed = true
				w.stop(rendezvous.Stop{Failure: &f})
				return
			}
		}
		w.stop(rendezvous.Stop{Reason: rendezvous.ReasonClosed})
		return
	}
	rn, rest, ok := e.parseRoundKey(key)
	if !ok {
		return
	}
	switch {
	case rn == n && rest == "fail" && !deleted:
		var f rendezvous.Failure
		if json.Unmarshal(value, &f) == nil {
			w.failed = true
			w.stop(rendezvous.Stop{Failure: &f})
		}
	case rn == n && strings.HasPrefix(rest, "done/") && !deleted:
		w.isDone[strings.TrimPrefix(rest, "done/")] = true
		if !w.allDoneClosed && len(w.isDone) >= len(w.members) && w.allMembersDone() {
			w.allDoneClosed = true // keys read again (compacted history) apply again
			close(w.allDone)
		}
	case rn == n && strings.HasPrefix(rest, "join/") && deleted:
		id := strings.TrimPrefix(rest, "join/")
		node, member := w.members[id]
		if !member || w.isDone[id] || w.failed || e.leaseLost.Load() {
			return
		}
		rank := 0
		for i, h := range w.round.Hosts {
			if h.ID == id {
				rank = i
			}
		}
		f := rendezvous.Failure{NodeRank: rank, Host: node.Host, Addr: node.Addr, Rank: -1, LocalRank: -1,
			ExitCode: rendezvous.LostExitCode, Lost: true, Time: time.Now(),
			Message: fmt.Sprintf("its etcd lease expired (its launcher died, or lost etcd for longer than the lease TTL %v)", e.cfg.LeaseTTL)}
		if first, err := e.publishFailure(ctx, n, f); err == nil {
			f = first
		}
		w.failed = true
		w.stop(rendezvous.Stop{Failure: &f})
	case rn == n+1 && strings.HasPrefix(rest, "join/") && !deleted:
		id := strings.TrimPrefix(rest, "join/")
		if _, member := w.members[id]; member || w.failed || len(w.members) >= e.cfg.MaxNodes {
			return
		}
		var node rendezvous.Node
		_ = json.Unmarshal(value, &node)
		w.stop(rendezvous.Stop{Reason: fmt.Sprintf("node %s is waiting to join", node.Addr)})
	}
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
