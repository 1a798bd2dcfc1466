package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous"
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
	ctx, cancel := context.WithTimeout(ctx, e.cfg.JoinTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
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
	if started {
		return newest + 1, nil
	}
	return newest, nil
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
	joined  map[string]rendezvous.Node // by id
	members *members
	closed  bool
}

// join puts this node into round n and waits for the round's members.
func (e *Rendezvous) join(ctx context.Context, n int, deadline time.Time) (rendezvous.Round, error) {
	b, _ := json.Marshal(e.self)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	events, err := e.syncedWatch(wctx)
	if err != nil {
		return rendezvous.Round{}, e.ctxErr(ctx, fmt.Errorf("rendezvous: watch run %s: %w", e.cfg.RunID, err))
	}
	resp, err := e.cli.Txn(ctx).Then(
		clientv3.OpPut(e.roundKey(n, "join", e.self.ID), string(b), clientv3.WithLease(e.lease)),
		clientv3.OpGet(e.roundKey(n)+"/", clientv3.WithPrefix()),
		clientv3.OpGet(e.key("closed")),
	).Commit()
	if err != nil {
		return rendezvous.Round{}, e.ctxErr(ctx, fmt.Errorf("rendezvous: join round %d: %w", n, err))
	}
	st := &joinState{joined: map[string]rendezvous.Node{}}
	for _, r := range resp.Responses[1:] {
		for _, kv := range r.GetResponseRange().Kvs {
			e.applyJoin(st, n, string(kv.Key), kv.Value, false)
		}
	}
	floor := resp.Header.Revision // events up to here are in the read
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
					e.applyJoin(st, n, string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
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
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ctx.Err()
	}
	return &JoinTimeoutError{RunID: e.cfg.RunID, Joined: addrs(sortedNodes(st.joined)), MinNodes: e.cfg.MinNodes, Timeout: e.cfg.JoinTimeout}
}

// applyJoin applies one key of the run to the state of round n.
func (e *Rendezvous) applyJoin(st *joinState, n int, key string, value []byte, deleted bool) {
	if key == e.key("closed") && !deleted {
		st.closed = true
		return
	}
	rn, rest, ok := e.parseRoundKey(key)
	if !ok || rn != n {
		return
	}
	switch {
	case strings.HasPrefix(rest, "join/"):
		id := strings.TrimPrefix(rest, "join/")
		if deleted {
			delete(st.joined, id)
			return
		}
		var node rendezvous.Node
		if json.Unmarshal(value, &node) == nil {
			st.joined[id] = node
		}
	case rest == "members" && !deleted:
		var m members
		if json.Unmarshal(value, &m) == nil {
			st.members = &m
		}
	}
}

// createMembers starts round n with the nodes joined, unless another node
// started it first (the transaction creates the key once).
func (e *Rendezvous) createMembers(ctx context.Context, n int, st *joinState) error {
	restart, err := e.restartCount(ctx, n)
	if err != nil {
		return err
	}
	m := members{Nodes: sortedNodes(st.joined), Restart: restart}
	if len(m.Nodes) > e.cfg.MaxNodes {
		m.Nodes = m.Nodes[:e.cfg.MaxNodes]
	}
	b, _ := json.Marshal(m)
	k := e.roundKey(n, "members")
	_, err = e.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return e.ctxErr(ctx, fmt.Errorf("rendezvous: start round %d: %w", n, err))
	}
	return nil
}

// restartCount is round n's TORCHELASTIC_RESTART_COUNT: the previous
// round's, plus one if that round failed (a change of membership spends
// no restart).
func (e *Rendezvous) restartCount(ctx context.Context, n int) (int, error) {
	if n == 0 {
		return 0, nil
	}
	resp, err := e.cli.Txn(ctx).Then(clientv3.OpGet(e.roundKey(n-1, "members")), clientv3.OpGet(e.roundKey(n-1, "fail"))).Commit()
	if err != nil {
		return 0, e.ctxErr(ctx, fmt.Errorf("rendezvous: read round %d: %w", n-1, err))
	}
	var prev members
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		_ = json.Unmarshal(kvs[0].Value, &prev)
	}
	if len(resp.Responses[1].GetResponseRange().Kvs) > 0 {
		return prev.Restart + 1, nil
	}
	return prev.Restart, nil
}

// startRound turns round n's members into this node's Round and starts
// watching the round.
func (e *Rendezvous) startRound(n int, m *members) (rendezvous.Round, error) {
	i := slices.IndexFunc(m.Nodes, func(x rendezvous.Node) bool { return x.ID == e.self.ID })
	if i < 0 {
		return rendezvous.Round{}, errTooLate
	}
	r := rendezvous.Round{Number: n, Restart: m.Restart, Hosts: m.Nodes}
	r.NNodes, r.NodeRank, r.NProcPerNode = len(m.Nodes), i, e.self.NProc
	for j, node := range m.Nodes {
		if j < i {
			r.FirstRank += node.NProc
		}
		r.WorldSize += node.NProc
	}
	r.MasterAddr, r.MasterPort = m.Nodes[0].Addr, m.Nodes[0].Port
	e.round = n
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
func sortedNodes(nodes map[string]rendezvous.Node) []rendezvous.Node {
	out := make([]rendezvous.Node, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n)
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
