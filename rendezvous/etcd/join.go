package etcd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// errTooLate is a round that started without this node: join the next.
var errTooLate = errors.New("rendezvous: round started without this node")

// Next joins the next round and waits, bounded by JoinTimeout, until it
// starts: at MaxNodes nodes at once, or LastCallTimeout after MinNodes
// joined. A node that arrives while a round runs joins the one after it
// (the running nodes take it in when the job is below MaxNodes). Each
// change of the nodes waiting is one status line on Notes.
func (e *Rendezvous) Next(ctx context.Context) (rendezvous.Round, error) {
	e.stopWatch()
	if e.leaseLost.Load() {
		return rendezvous.Round{}, e.lostError()
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.JoinTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	ctx, lcancel := e.opCtx(ctx) // etcd lost: every wait ends at once
	defer lcancel()
	n := e.round + 1
	if e.round < 0 {
		var err error
		if n, err = e.firstRound(ctx); err != nil {
			return rendezvous.Round{}, err
		}
	}
	for {
		r, err := e.join(ctx, n, deadline)
		if errors.Is(err, errTooLate) {
			n++
			continue
		}
		if err != nil {
			return rendezvous.Round{}, err
		}
		return r, nil
	}
}

// firstRound picks the round a new node joins: the newest one that has
// not started, or the one after the newest started. It reads two keys
// and one members record, whatever the number of nodes.
func (e *Rendezvous) firstRound(ctx context.Context) (int, error) {
	resp, err := e.cli.Txn(ctx).Then(gateway.OpGet(e.key("closed"), gateway.WithKeysOnly()),
		gateway.OpGet(e.key("r")+"/", gateway.WithPrefix(), gateway.WithKeysOnly(),
			gateway.WithSort(gateway.SortByKey, gateway.SortDescend), gateway.WithLimit(1))).Commit()
	if err != nil {
		return 0, e.ctxErr(ctx, fmt.Errorf("rendezvous: read run %s: %w", e.cfg.RunID, err))
	}
	if len(resp.Responses[0].GetResponseRange().Kvs) > 0 {
		return 0, e.closedError(ctx)
	}
	newest := 0
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		if n, _, ok := e.parseRoundKey(string(kvs[0].Key)); ok {
			newest = n
		}
	}
	// The newest round started if its members are what the round's own
	// protocol wrote; a forged value does not move this node on.
	k := e.roundKey(newest, "members")
	mresp, err := e.cli.Get(ctx, k)
	if err != nil {
		return 0, e.ctxErr(ctx, fmt.Errorf("rendezvous: read run %s: %w", e.cfg.RunID, err))
	}
	if len(mresp.Kvs) == 0 {
		return newest, nil
	}
	_, err = e.verifyMembers(ctx, newest, mresp.Kvs[0], nil, "", false)
	var ne *NNodesError
	switch {
	case errors.As(err, &ne):
		return 0, err
	case err != nil:
		e.warnIgnored(k, err)
		return newest, nil
	}
	return newest + 1, nil
}

func (e *Rendezvous) closedError(ctx context.Context) error {
	status := "closed"
	if resp, err := e.cli.Get(ctx, e.key("closed")); err == nil && len(resp.Kvs) > 0 {
		status = string(resp.Kvs[0].Value)
	}
	return &ClosedError{RunID: e.cfg.RunID, Status: status}
}

// ctxErr gives the join timeout's error when ctx's deadline is what ended
// an etcd call.
func (e *Rendezvous) ctxErr(ctx context.Context, err error) error {
	if e.leaseLost.Load() {
		return e.lostError()
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &JoinTimeoutError{RunID: e.cfg.RunID, MinNodes: e.cfg.MinNodes, Timeout: e.cfg.JoinTimeout}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// joinState is a round's state as this node waits for it to start. Only
// the round's coordinator follows the nodes joining; the others follow
// the coordination, the members and the run's end.
type joinState struct {
	n     int
	coord string // the round's coordinator's id; "" none, "?" claimed by another, not yet seen
	// coordBad is the revision of a coord value that failed verification:
	// a node may claim the coordination over it.
	coordBad    int64
	isCoord     bool
	claimRev    int64                 // the revision at which this node claimed the coordination; 0 unknown
	joined      map[string]joinRecord // the coordinator's: the nodes joined, by id, verified
	seen        int64                 // the coordinator's: join keys known up to this revision
	tried       int64                 // the coordinator's: seen when it last tried to start the round
	members     *members
	rank, first int      // this node's place in them
	wrote       *members // the coordinator's: the members it wrote
	// badMembers is the revision of a members value that failed
	// verification: the round's own protocol may write over it.
	badMembers int64
	closed     bool

	shown   int       // the coordinator's: the number of nodes its last status line showed
	shownAt time.Time // and when
}

// join puts this node into round n and waits for the round's members: it
// watches the round's members and coordination and the run's end (three
// keys), joins, and claims the coordination if nobody holds it.
func (e *Rendezvous) join(ctx context.Context, n int, deadline time.Time) (rendezvous.Round, error) {
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	events, err := e.watchKeys(wctx, 0, watchSpec{key: e.roundKey(n, "members")}, watchSpec{key: e.roundKey(n, "coord"), noPut: true}, watchSpec{key: e.key("closed")})
	if err != nil {
		return rendezvous.Round{}, e.ctxErr(ctx, fmt.Errorf("rendezvous: watch run %s: %w", e.cfg.RunID, err))
	}
	rev, err := e.putJoin(ctx, n)
	if err != nil {
		return rendezvous.Round{}, err
	}
	resp, err := e.cli.Txn(ctx).Then(gateway.OpGet(e.roundKey(n, "coord"), gateway.WithRev(rev)),
		gateway.OpGet(e.roundKey(n, "members"), gateway.WithRev(rev)), gateway.OpGet(e.key("closed"), gateway.WithRev(rev))).Commit()
	if err != nil {
		return rendezvous.Round{}, e.ctxErr(ctx, fmt.Errorf("rendezvous: join round %d: %w", n, err))
	}
	st := &joinState{n: n}
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			if err := e.applyJoin(ctx, st, kv, false); err != nil {
				return rendezvous.Round{}, err
			}
		}
	}
	return e.waitRound(ctx, wctx, deadline, st, events, rev)
}

// putJoin writes this node's join record of round n, on its lease, and
// returns the revision it is at. A record of this node's identity that
// another launcher wrote is an *IdentityError.
func (e *Rendezvous) putJoin(ctx context.Context, n int) (int64, error) {
	b, _ := json.Marshal(joinRecord{Node: e.self, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes})
	k := e.roundKey(n, "join", e.self.ID)
	put := gateway.OpPut(k, string(b), gateway.WithLease(e.lease))
	resp, err := e.cli.Txn(ctx).If(gateway.Compare(gateway.CreateRevision(k), "=", 0)).Then(put).
		Else(gateway.OpTxn([]gateway.Cmp{gateway.Compare(gateway.LeaseValue(k), "=", e.lease)}, []gateway.Op{put}, nil)).Commit()
	if err != nil {
		return 0, e.ctxErr(ctx, fmt.Errorf("rendezvous: join round %d: %w", n, err))
	}
	if !resp.Succeeded && !resp.Responses[0].GetResponseTxn().Succeeded {
		return 0, &IdentityError{RunID: e.cfg.RunID, ID: e.self.ID}
	}
	return resp.Header.Revision, nil
}

// waitRound waits for round st.n to start, following events (members,
// coordination, the run's end) from revision floor on, and, while this
// node coordinates, the round's joins.
func (e *Rendezvous) waitRound(ctx, wctx context.Context, deadline time.Time, st *joinState, events <-chan gateway.WatchResponse, floor int64) (rendezvous.Round, error) {
	lc := &lastCall{}
	defer lc.stop()
	var joins <-chan gateway.WatchResponse // the coordinator's
	for {
		switch {
		case st.members != nil:
			// Before closed: a round this node is in runs even if it
			// failed and closed the run at once (its watch sees that).
			return e.startRound(ctx, st.n, st.members, st.rank, st.first)
		case st.closed:
			return rendezvous.Round{}, e.closedError(ctx)
		}
		if err := e.coordinate(ctx, wctx, st, deadline, lc, &joins); err != nil {
			return rendezvous.Round{}, err
		}
		select {
		case wr, ok := <-events:
			if err := e.applyEvents(ctx, st, wr, ok, floor); err != nil {
				return e.rejoin(ctx, st, deadline, err)
			}
		case wr, ok := <-joins:
			if err := e.applyEvents(ctx, st, wr, ok, st.seen); err != nil {
				return e.rejoin(ctx, st, deadline, err)
			}
		case <-lc.c:
			lc.stop()
			if err := e.createMembers(ctx, st); err != nil {
				return rendezvous.Round{}, err
			}
		case <-ctx.Done():
			return rendezvous.Round{}, e.joinTimeout(ctx, st)
		}
	}
}

// errWatchBroken is a watch that ended (etcd restarted, or compacted the
// history it resumes from).
var errWatchBroken = errors.New("rendezvous: watch broken")

// rejoin handles an error of applyEvents: a broken watch reads the round
// again, anything else ends the wait.
func (e *Rendezvous) rejoin(ctx context.Context, st *joinState, deadline time.Time, err error) (rendezvous.Round, error) {
	switch {
	case !errors.Is(err, errWatchBroken):
		return rendezvous.Round{}, err
	case ctx.Err() != nil:
		return rendezvous.Round{}, e.joinTimeout(ctx, st)
	}
	return e.join(ctx, st.n, deadline)
}

// applyEvents applies one watch response's events after revision floor.
func (e *Rendezvous) applyEvents(ctx context.Context, st *joinState, wr gateway.WatchResponse, ok bool, floor int64) error {
	if !ok || wr.Err() != nil || wr.CompactRevision != 0 {
		return errWatchBroken
	}
	for _, ev := range wr.Events {
		if ev.Kv.ModRevision > floor {
			if err := e.applyJoin(ctx, st, ev.Kv, ev.Type == gateway.EventTypeDelete); err != nil {
				return err
			}
		}
	}
	return nil
}

// lastCall is the timer that starts an elastic round LastCallTimeout
// after MinNodes joined.
type lastCall struct {
	t *time.Timer
	c <-chan time.Time
}

func (l *lastCall) stop() {
	if l.t != nil {
		l.t.Stop()
	}
	l.t, l.c = nil, nil
}

// coordinate claims the round's coordination when nobody holds it and,
// while this node holds it, says how many nodes joined (at most once a
// second: a status line is O(N) to write) and starts the round at
// MaxNodes, or LastCallTimeout after MinNodes.
func (e *Rendezvous) coordinate(ctx, wctx context.Context, st *joinState, deadline time.Time, lc *lastCall, joins *<-chan gateway.WatchResponse) error {
	if st.coord == "" {
		won, err := e.claim(ctx, st)
		if err != nil || !won {
			return err
		}
	}
	if !st.isCoord {
		return nil
	}
	if st.joined == nil {
		ch, err := e.followJoins(ctx, wctx, st)
		if err != nil {
			return err
		}
		*joins = ch
	}
	if k := len(st.joined); k != st.shown && time.Since(st.shownAt) >= time.Second {
		st.shown, st.shownAt = k, time.Now()
		fmt.Fprintln(e.cfg.Notes, e.status(st, deadline))
	}
	switch k := len(st.joined); {
	case k >= e.cfg.MaxNodes && st.tried != st.seen:
		// Once per change: a try that failed waits for what changed.
		st.tried = st.seen
		return e.createMembers(ctx, st)
	case k >= e.cfg.MinNodes && lc.t == nil:
		lc.t = time.NewTimer(e.cfg.LastCallTimeout)
		lc.c = lc.t.C
	case k < e.cfg.MinNodes && lc.t != nil:
		lc.stop()
	}
	return nil
}

// claim takes round st.n's coordination, on this node's lease, unless
// another node holds it (or a value that failed verification changed).
func (e *Rendezvous) claim(ctx context.Context, st *joinState) (bool, error) {
	k := e.roundKey(st.n, "coord")
	resp, err := e.cli.Txn(ctx).If(gateway.Compare(gateway.ModRevision(k), "=", st.coordBad)).
		Then(gateway.OpPut(k, e.self.ID, gateway.WithLease(e.lease))).Else(gateway.OpGet(k)).Commit()
	if err != nil {
		return false, e.ctxErr(ctx, fmt.Errorf("rendezvous: coordinate round %d: %w", st.n, err))
	}
	if !resp.Succeeded {
		// The watch leaves out the coordination's puts: the answer says
		// who holds it.
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			return false, e.applyCoord(ctx, st, kvs[0])
		}
		return false, nil // gone since: claim again at the next event
	}
	st.coord, st.isCoord, st.claimRev = e.self.ID, true, resp.Header.Revision
	return true, nil
}

// followJoins starts the coordinator's watch of round st.n's joins, then
// reads the joins there are (bounded: see readRun). Both start at the
// revision of the claim, when known: a node that joined before it and
// left since (it found the coordinator was started for another number of
// nodes, say) is still seen, and is refused here too.
func (e *Rendezvous) followJoins(ctx, wctx context.Context, st *joinState) (<-chan gateway.WatchResponse, error) {
	jp := e.roundKey(st.n, "join") + "/"
	want := func(kv *gateway.KeyValue) bool { return e.onOwnLease(strings.TrimPrefix(string(kv.Key), jp), kv) }
	var kvs []*gateway.KeyValue
	var at int64
	var err error
	rev := st.claimRev
	if rev > 0 {
		if _, kvs, at, err = e.readRun(ctx, rev, jp, want); errors.Is(err, gateway.ErrCompacted) {
			rev, err = 0, nil // history gone: from now on
		}
	}
	var ch <-chan gateway.WatchResponse
	if err == nil && rev > 0 {
		ch, err = e.watchKeys(wctx, rev+1, watchSpec{key: jp, prefix: true})
	} else if err == nil {
		// Watching from now, then reading: nothing falls in between.
		if ch, err = e.watchKeys(wctx, 0, watchSpec{key: jp, prefix: true}); err == nil {
			_, kvs, at, err = e.readRun(ctx, 0, jp, want)
		}
	}
	if err != nil {
		return nil, e.ctxErr(ctx, fmt.Errorf("rendezvous: follow round %d's joins: %w", st.n, err))
	}
	st.joined, st.seen = map[string]joinRecord{}, at
	slices.SortFunc(kvs, func(a, b *gateway.KeyValue) int { return cmp.Compare(a.ModRevision, b.ModRevision) })
	for _, kv := range kvs {
		if err := e.applyJoin(ctx, st, kv, false); err != nil {
			return nil, err
		}
	}
	return ch, nil
}

func (e *Rendezvous) joinTimeout(ctx context.Context, st *joinState) error {
	if e.leaseLost.Load() {
		return e.lostError()
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ctx.Err()
	}
	joined := []string{e.self.Addr}
	if st.isCoord {
		joined = addrs(sortedNodes(st.joined))
	}
	return &JoinTimeoutError{RunID: e.cfg.RunID, Joined: joined, MinNodes: e.cfg.MinNodes, Timeout: e.cfg.JoinTimeout}
}

// applyJoin applies one key of the run to the state of round st.n. A key
// that fails verification is ignored with a warning; a node started for
// another number of nodes is an *NNodesError.
func (e *Rendezvous) applyJoin(ctx context.Context, st *joinState, kv *gateway.KeyValue, deleted bool) error {
	key := string(kv.Key)
	if key == e.key("closed") && !deleted {
		st.closed = true
		return nil
	}
	rn, rest, ok := e.parseRoundKey(key)
	if !ok || rn != st.n {
		return nil
	}
	if id, isJoin := parseRoundID(rest, "join"); isJoin {
		if st.isCoord {
			st.seen = max(st.seen, kv.ModRevision)
			return e.applyJoinRecord(st, id, kv, deleted)
		}
		return nil
	}
	switch {
	case rest == "coord" && deleted:
		// Its holder's lease went: any node may claim it (this one
		// again, if a writer deleted it under it).
		st.coord, st.coordBad, st.isCoord, st.joined = "", 0, false, nil
	case rest == "coord":
		return e.applyCoord(ctx, st, kv)
	case rest == "members" && !deleted:
		var own *members
		if st.isCoord {
			own = st.wrote
		}
		m, err := e.verifyMembers(ctx, st.n, kv, own, st.coord, true)
		if err == nil {
			st.rank, st.first, err = e.placeSelf(ctx, st.n, m)
		}
		var ne *NNodesError
		switch {
		case errors.As(err, &ne) || errors.Is(err, errTooLate):
			return err
		case err != nil:
			e.warnIgnored(key, err)
			st.badMembers = kv.ModRevision
		default:
			st.members = m
		}
	}
	return nil
}

// applyJoinRecord applies, at the coordinator, node id's join record kv.
func (e *Rendezvous) applyJoinRecord(st *joinState, id string, kv *gateway.KeyValue, deleted bool) error {
	if deleted {
		delete(st.joined, id)
		return nil
	}
	j, err := parseJoin(id, kv)
	if err != nil {
		e.warnIgnored(string(kv.Key), err)
		return nil
	}
	if err := e.sameNNodes(j); err != nil {
		e.holdFor(string(kv.Key), kv.ModRevision)
		return err
	}
	j.rev = kv.ModRevision
	st.joined[id] = j
	return nil
}

// holdFor keeps this node, the coordinator, in the run until the join key
// of a node started for another number of nodes is gone, bounded by
// twice the lease TTL: that node claims the coordination next, finds this
// node's and leaves saying the same; were this node to leave first, it
// could become the coordinator of a round that never sees this node's
// join, and wait out its join_timeout without saying why.
func (e *Rendezvous) holdFor(key string, rev int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*e.cfg.LeaseTTL)
	defer cancel()
	for wr := range e.cli.Watch(ctx, key, gateway.WithRev(rev+1), gateway.WithFilterPut()) {
		if wr.Err() != nil || len(wr.Events) > 0 {
			return
		}
	}
}

// sameNNodes is an *NNodesError when node j was started for another
// number of nodes than this one.
func (e *Rendezvous) sameNNodes(j joinRecord) error {
	if j.MinNodes != e.cfg.MinNodes || j.MaxNodes != e.cfg.MaxNodes {
		return &NNodesError{RunID: e.cfg.RunID, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes,
			Addr: j.Addr, OtherMin: j.MinNodes, OtherMax: j.MaxNodes}
	}
	return nil
}

// applyCoord applies round st.n's coordination record kv: the id of the
// node that holds it, on that node's lease. Another node's coordination
// is checked once against its join record (one read): a coordinator
// started for another number of nodes is an *NNodesError here too.
func (e *Rendezvous) applyCoord(ctx context.Context, st *joinState, kv *gateway.KeyValue) error {
	id := string(kv.Value)
	if len(id) > maxJoinValue || kv.Lease == 0 || kv.Lease != leaseOf(id) {
		e.warnIgnored(string(kv.Key), errors.New("not a node id on that node's lease"))
		st.coord, st.coordBad = "", kv.ModRevision
		return nil
	}
	if id == e.self.ID {
		st.coord, st.isCoord = id, true
		return nil
	}
	st.coord = id
	resp, err := e.cli.Get(ctx, e.roundKey(st.n, "join", id))
	if err != nil {
		return e.ctxErr(ctx, fmt.Errorf("rendezvous: read round %d: %w", st.n, err))
	}
	if len(resp.Kvs) == 0 {
		return nil // gone already: its coordination goes with its lease
	}
	j, err := parseJoin(id, resp.Kvs[0])
	if err != nil {
		e.warnIgnored(string(resp.Kvs[0].Key), err)
		return nil
	}
	if err := e.sameNNodes(j); err != nil {
		return err
	}
	fmt.Fprintf(e.cfg.Notes, "mpspawn: rendezvous %s: joined; node %s gathers the nodes\n", e.cfg.RunID, j.Addr)
	return nil
}
