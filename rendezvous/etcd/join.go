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
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// firstRound reads the run and picks the round a new node joins: the
// newest one that has not started, or the one after the newest started.
func (e *Rendezvous) firstRound(ctx context.Context) (int, error) {
	resp, err := e.cli.Get(ctx, e.prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, e.ctxErr(ctx, fmt.Errorf("rendezvous: read run %s: %w", e.cfg.RunID, err))
	}
	newest, started := 0, false
	for _, kv := range resp.Kvs {
		if string(kv.Key) == e.key("closed") {
			return 0, e.closedError(ctx)
		}
		n, rest, ok := e.parseRoundKey(string(kv.Key))
		if !ok {
			continue
		}
		if n > newest {
			newest, started = n, false
		}
		if n == newest && rest == "members" {
			started = true
		}
	}
	if !started {
		return newest, nil
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
	_, err = e.verifyMembers(ctx, newest, mresp.Kvs[0], nil)
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

// joinState is a round's nodes as this node waits for it to start.
type joinState struct {
	joined  map[string]joinRecord // by id, verified
	members *members
	// badMembers is the revision of a members value that failed
	// verification: the round's own protocol may write over it.
	badMembers int64
	closed     bool
}

// join puts this node into round n and waits for the round's members.
func (e *Rendezvous) join(ctx context.Context, n int, deadline time.Time) (rendezvous.Round, error) {
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	events, err := e.syncedWatch(wctx)
	if err != nil {
		return rendezvous.Round{}, e.ctxErr(ctx, fmt.Errorf("rendezvous: watch run %s: %w", e.cfg.RunID, err))
	}
	rev, err := e.putJoin(ctx, n)
	if err != nil {
		return rendezvous.Round{}, err
	}
	_, kvs, floor, err := e.readRun(ctx, rev, e.wantJoin(n)) // events up to floor are in the read
	if err != nil {
		return rendezvous.Round{}, e.ctxErr(ctx, fmt.Errorf("rendezvous: join round %d: %w", n, err))
	}
	st := &joinState{joined: map[string]joinRecord{}}
	slices.SortFunc(kvs, func(a, b *mvccpb.KeyValue) int { return cmp.Compare(a.ModRevision, b.ModRevision) })
	for _, kv := range kvs {
		if err := e.applyJoin(ctx, st, n, kv, false); err != nil {
			return rendezvous.Round{}, err
		}
	}
	return e.waitRound(ctx, n, deadline, st, events, floor)
}

// putJoin writes this node's join record of round n, on its lease, and
// returns the revision it is at. A record of this node's identity that
// another launcher wrote is an *IdentityError.
func (e *Rendezvous) putJoin(ctx context.Context, n int) (int64, error) {
	b, _ := json.Marshal(joinRecord{Node: e.self, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes})
	k := e.roundKey(n, "join", e.self.ID)
	put := clientv3.OpPut(k, string(b), clientv3.WithLease(e.lease))
	resp, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(put).
		Else(clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(k), "=", e.lease)}, []clientv3.Op{put}, nil)).Commit()
	if err != nil {
		return 0, e.ctxErr(ctx, fmt.Errorf("rendezvous: join round %d: %w", n, err))
	}
	if !resp.Succeeded && !resp.Responses[0].GetResponseTxn().Succeeded {
		return 0, &IdentityError{RunID: e.cfg.RunID, ID: e.self.ID}
	}
	return resp.Header.Revision, nil
}

// waitRound waits for round n to start, following the run's events from
// revision floor on.
func (e *Rendezvous) waitRound(ctx context.Context, n int, deadline time.Time, st *joinState, events clientv3.WatchChan, floor int64) (rendezvous.Round, error) {
	var lastCall *time.Timer
	var lastCallC <-chan time.Time
	defer func() {
		if lastCall != nil {
			lastCall.Stop()
		}
	}()
	shown := ""
	for {
		switch {
		case st.members != nil:
			// Before closed: a round this node is in runs even if it
			// failed and closed the run at once (its watch sees that).
			return e.startRound(n, st.members)
		case st.closed:
			return rendezvous.Round{}, e.closedError(ctx)
		}
		if who := strings.Join(addrs(sortedNodes(st.joined)), ", "); who != shown {
			shown = who
			fmt.Fprintln(e.cfg.Notes, e.status(st, deadline))
		}
		switch {
		case len(st.joined) >= e.cfg.MaxNodes:
			if err := e.createMembers(ctx, n, st); err != nil {
				return rendezvous.Round{}, err
			}
		case len(st.joined) >= e.cfg.MinNodes && lastCall == nil:
			lastCall = time.NewTimer(e.cfg.LastCallTimeout)
			lastCallC = lastCall.C
		case len(st.joined) < e.cfg.MinNodes && lastCall != nil:
			lastCall.Stop()
			lastCall, lastCallC = nil, nil
		}
		select {
		case wr, ok := <-events:
			if !ok || wr.Err() != nil {
				if ctx.Err() != nil {
					return rendezvous.Round{}, e.joinTimeout(ctx, st)
				}
				// The watch broke (etcd restarted): read the round again.
				return e.join(ctx, n, deadline)
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision > floor {
					if err := e.applyJoin(ctx, st, n, ev.Kv, ev.Type == clientv3.EventTypeDelete); err != nil {
						return rendezvous.Round{}, err
					}
				}
			}
		case <-lastCallC:
			lastCall, lastCallC = nil, nil
			if err := e.createMembers(ctx, n, st); err != nil {
				return rendezvous.Round{}, err
			}
		case <-ctx.Done():
			return rendezvous.Round{}, e.joinTimeout(ctx, st)
		}
	}
}

func (e *Rendezvous) joinTimeout(ctx context.Context, st *joinState) error {
	if e.leaseLost.Load() {
		return e.lostError()
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ctx.Err()
	}
	return &JoinTimeoutError{RunID: e.cfg.RunID, Joined: addrs(sortedNodes(st.joined)), MinNodes: e.cfg.MinNodes, Timeout: e.cfg.JoinTimeout}
}

// applyJoin applies one key of the run to the state of round n. A key
// that fails verification is ignored with a warning; a node started for
// another number of nodes is an *NNodesError.
func (e *Rendezvous) applyJoin(ctx context.Context, st *joinState, n int, kv *mvccpb.KeyValue, deleted bool) error {
	key := string(kv.Key)
	if key == e.key("closed") && !deleted {
		st.closed = true
		return nil
	}
	rn, rest, ok := e.parseRoundKey(key)
	if !ok || rn != n {
		return nil
	}
	switch id, isJoin := strings.CutPrefix(rest, "join/"); {
	case isJoin && deleted:
		delete(st.joined, id)
	case isJoin:
		j, err := parseJoin(id, kv)
		if err != nil {
			e.warnIgnored(key, err)
			return nil
		}
		if j.MinNodes != e.cfg.MinNodes || j.MaxNodes != e.cfg.MaxNodes {
			return &NNodesError{RunID: e.cfg.RunID, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes,
				Addr: j.Addr, OtherMin: j.MinNodes, OtherMax: j.MaxNodes}
		}
		j.rev = kv.ModRevision
		st.joined[id] = j
	case rest == "members" && !deleted:
		m, err := e.verifyMembers(ctx, n, kv, st.joined)
		var ne *NNodesError
		switch {
		case errors.As(err, &ne):
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

// createMembers starts round n with the nodes joined, unless another node
// started it first (the transaction creates the key once, or writes over
// a members value that failed verification) or a node's join record
// changed since this node read it.
func (e *Rendezvous) createMembers(ctx context.Context, n int, st *joinState) error {
	restart, err := e.restartCount(ctx, n)
	if err != nil {
		return err
	}
	m := members{Nodes: sortedNodes(st.joined), Restart: restart, MinNodes: e.cfg.MinNodes, MaxNodes: e.cfg.MaxNodes}
	if len(m.Nodes) > e.cfg.MaxNodes {
		m.Nodes = m.Nodes[:e.cfg.MaxNodes]
	}
	b, _ := json.Marshal(m)
	k := e.roundKey(n, "members")
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", st.badMembers)}
	for _, node := range m.Nodes {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(e.roundKey(n, "join", node.ID)), "=", st.joined[node.ID].rev))
	}
	_, err = e.cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return e.ctxErr(ctx, fmt.Errorf("rendezvous: start round %d: %w", n, err))
	}
	return nil
}

// restartCount is round n's TORCHELASTIC_RESTART_COUNT: the previous
// round's, plus one if that round failed (a change of membership spends
// no restart). The previous round is the one this node ran, or else its
// members verified; a failure counts once verified against them.
func (e *Rendezvous) restartCount(ctx context.Context, n int) (int, error) {
	if n == 0 {
		return 0, nil
	}
	resp, err := e.cli.Txn(ctx).Then(clientv3.OpGet(e.roundKey(n-1, "members")), clientv3.OpGet(e.roundKey(n-1, "fail"))).Commit()
	if err != nil {
		return 0, e.ctxErr(ctx, fmt.Errorf("rendezvous: read round %d: %w", n-1, err))
	}
	prev := e.last
	if prev.Number != n-1 || prev.Hosts == nil {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return 0, nil
		}
		m, err := e.verifyMembers(ctx, n-1, kvs[0], nil)
		if err != nil {
			e.warnIgnored(string(kvs[0].Key), err)
			return 0, nil
		}
		prev = roundOf(n-1, m, 0)
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		if _, err := parseFailure(kvs[0], prev, 0); err != nil {
			e.warnIgnored(string(kvs[0].Key), err)
			return prev.Restart, nil
		}
		return prev.Restart + 1, nil
	}
	return prev.Restart, nil
}

// roundOf is round n with members m, as node i of them sees it.
func roundOf(n int, m *members, i int) rendezvous.Round {
	r := rendezvous.Round{Number: n, Restart: m.Restart, Hosts: m.Nodes}
	r.NNodes, r.NodeRank, r.NProcPerNode = len(m.Nodes), i, m.Nodes[i].NProc
	for j, node := range m.Nodes {
		if j < i {
			r.FirstRank += node.NProc
		}
		r.WorldSize += node.NProc
	}
	r.MasterAddr, r.MasterPort = m.Nodes[0].Addr, m.Nodes[0].Port
	return r
}

// startRound turns round n's members into this node's Round and starts
// watching the round.
func (e *Rendezvous) startRound(n int, m *members) (rendezvous.Round, error) {
	i := slices.IndexFunc(m.Nodes, func(x rendezvous.Node) bool { return x.ID == e.self.ID })
	if i < 0 {
		return rendezvous.Round{}, errTooLate
	}
	r := roundOf(n, m, i)
	e.round, e.last = n, r
	e.cur = e.watchRound(r)
	return r, nil
}

// status is the line that shows the nodes waiting for a round.
func (e *Rendezvous) status(st *joinState, deadline time.Time) string {
	want := fmt.Sprint(e.cfg.MaxNodes)
	if e.cfg.MinNodes != e.cfg.MaxNodes {
		want = fmt.Sprintf("%d (at least %d)", e.cfg.MaxNodes, e.cfg.MinNodes)
	}
	left := time.Until(deadline).Round(time.Second)
	return fmt.Sprintf("mpspawn: rendezvous %s: %d/%s nodes (%s), waiting up to %v",
		e.cfg.RunID, len(st.joined), want, strings.Join(addrs(sortedNodes(st.joined)), ", "), left)
}

// sortedNodes orders nodes by id: node ranks are the same on every node,
// and stay the same across rounds while the nodes do.
func sortedNodes(nodes map[string]joinRecord) []rendezvous.Node {
	out := make([]rendezvous.Node, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.Node)
	}
	slices.SortFunc(out, func(a, b rendezvous.Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func addrs(nodes []rendezvous.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Addr
	}
	return out
}

// syncedWatch watches the whole run from now on and returns once etcd has
// created the watch. A watch from an older revision would do without the
// read that follows it, but etcd catches up such watches only every
// 100 ms; one created first, with a read after it, is told of every change
// at once.
func (e *Rendezvous) syncedWatch(ctx context.Context) (clientv3.WatchChan, error) {
	events := e.cli.Watch(clientv3.WithRequireLeader(ctx), e.prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	select {
	case wr, ok := <-events:
		if !ok {
			return nil, ctx.Err()
		}
		if err := wr.Err(); err != nil {
			return nil, err
		}
		return events, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
