// Package etcd is the etcd v3 rendezvous of multi-node jobs: nodes join a
// run's rounds under a per-run key prefix, each holding a lease kept alive,
// and learn of every other node's failure, loss or arrival through watches.
// It implements rendezvous.Rendezvous; it lives apart from package
// rendezvous so that programs that never go multi-node (every Go API
// program, whose ranks re-execute it) do not link the etcd client, grpc and
// protobuf: 15 MB of binary and about 5 ms of package init per process.
package etcd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults of Config's bounds, torchrun's where it has them.
const (
	DefaultJoinTimeout     = 600 * time.Second
	DefaultLastCallTimeout = 30 * time.Second
	DefaultCloseTimeout    = 30 * time.Second
	DefaultConnectTimeout  = 5 * time.Second
	DefaultLeaseTTL        = 5 * time.Second
)

// Config is one node's view of an etcd rendezvous.
type Config struct {
	Endpoints []string // host:port of the etcd servers
	RunID     string   // the job: nodes with the same run id meet
	// Prefix is where the run's keys go: Prefix + RunID + "/...".
	// Empty means "/mpspawn/".
	Prefix string

	MinNodes, MaxNodes int // a round starts at MaxNodes, or LastCallTimeout after MinNodes joined
	NProc              int // this node's ranks

	LocalAddr string // how the other nodes reach this node (MASTER_ADDR when it is node 0)
	Host      string // this node's host name, for messages

	JoinTimeout     time.Duration // bound on each round's wait for the nodes
	LastCallTimeout time.Duration // wait for more nodes once MinNodes joined
	CloseTimeout    time.Duration // a finished node's wait for the others
	ConnectTimeout  time.Duration // bound on reaching etcd at the start
	LeaseTTL        time.Duration // a lost node is noticed within it (whole seconds, at least 1)

	TLS *tls.Config // nil: plain connections
	// Username and Password log in to an etcd with authentication on
	// (see JobUser and Password); empty: none.
	Username, Password string
	// Server, when set, is checked before joining: the server must hold
	// its record (see HostRecord), else New fails with a *ServerError.
	Server *ServerCheck

	// Notes receives status lines ("rendezvous <id>: 2/4 nodes ...") and
	// warnings; nil discards them.
	Notes io.Writer
}

func (c *Config) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&c.JoinTimeout, DefaultJoinTimeout)
	set(&c.LastCallTimeout, DefaultLastCallTimeout)
	set(&c.CloseTimeout, DefaultCloseTimeout)
	set(&c.ConnectTimeout, DefaultConnectTimeout)
	set(&c.LeaseTTL, DefaultLeaseTTL)
	if c.Prefix == "" {
		c.Prefix = "/mpspawn/"
	}
	if c.Host == "" {
		c.Host, _ = os.Hostname()
	}
	if c.LocalAddr == "" {
		c.LocalAddr = c.Host
	}
	if c.Notes == nil {
		c.Notes = io.Discard
	}
}

// ConnectError is an etcd endpoint that could not be reached at the start
// within ConnectTimeout.
type ConnectError struct {
	Endpoints []string
	Timeout   time.Duration
	Err       error
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("rendezvous: etcd at %s not reachable within %v: %v", strings.Join(e.Endpoints, ","), e.Timeout, e.Err)
}

func (e *ConnectError) Unwrap() error { return e.Err }

// JoinTimeoutError is a round that did not gather enough nodes within
// JoinTimeout.
type JoinTimeoutError struct {
	RunID    string
	Joined   []string // the nodes that joined, by address
	MinNodes int
	Timeout  time.Duration
}

func (e *JoinTimeoutError) Error() string {
	return fmt.Sprintf("rendezvous: %s: %d of %d nodes joined within %v (%s)", e.RunID, len(e.Joined), e.MinNodes, e.Timeout, strings.Join(e.Joined, ", "))
}

// ClosedError is Next's error for a run that has ended; it wraps
// ErrClosed.
type ClosedError struct {
	RunID  string
	Status string // how the run ended: "succeeded" or "failed"
}

func (e *ClosedError) Error() string {
	return fmt.Sprintf("rendezvous: %s: the run has ended (%s); start a new one with another run id", e.RunID, e.Status)
}

func (e *ClosedError) Unwrap() error { return rendezvous.ErrClosed }

var _ rendezvous.Rendezvous = (*Rendezvous)(nil)

// Rendezvous is one node's membership of an etcd v3 rendezvous. The node holds
// a lease, kept alive in the background, that its keys are attached to:
// when its launcher dies, even by SIGKILL, the lease expires within the
// TTL and the other nodes see it go.
//
// Keys, under Prefix + RunID + "/":
//
//	r/<round>/join/<node>  the node's Node, on its lease
//	r/<round>/members      the round's nodes by node rank, and its restart count
//	r/<round>/fail         the round's first Failure
//	r/<round>/done/<node>  the node's ranks all succeeded
//	closed                 the run's end: "succeeded" or "failed"
//
// A Rendezvous is used by one launcher goroutine at a time, except Stopped's
// channel.
type Rendezvous struct {
	cfg    Config
	cli    *clientv3.Client
	lease  clientv3.LeaseID
	self   rendezvous.Node
	prefix string

	hold *os.File // the master port this node reserved

	kaCancel context.CancelFunc
	kaDone   chan struct{}

	round int              // the current round's number; -1 before the first
	last  rendezvous.Round // the round this node last started
	cur   *roundWatch      // the current round's watcher, nil between rounds

	warned sync.Map // keys ignored with a warning already

	closeOnce sync.Once
	closeErr  error

	// leaseLost is set once the lease could not be kept alive (etcd away
	// for longer than the TTL): every node's lease has then expired or
	// will, so a node's keys going no longer means the node is lost.
	leaseLost atomic.Bool
}

// New connects to etcd (failing within ConnectTimeout with a
// *ConnectError), takes a lease and reserves a master port for the case
// that this node becomes node 0. It does not join a round: Next does.
func New(ctx context.Context, cfg Config) (*Rendezvous, error) {
	cfg.defaults()
	if cfg.Server != nil {
		if err := waitServer(ctx, &cfg); err != nil {
			return nil, err
		}
	}
	cli, err := clientv3.New(clientConfig(&cfg))
	if err != nil {
		return nil, &ConnectError{Endpoints: cfg.Endpoints, Timeout: cfg.ConnectTimeout, Err: err}
	}
	e := &Rendezvous{cfg: cfg, cli: cli, prefix: cfg.Prefix + cfg.RunID + "/", round: -1}
	if err := e.connect(ctx); err != nil {
		cli.Close()
		return nil, err
	}
	port, hold, err := rendezvous.ReservePort()
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("rendezvous: reserve a free port: %w", err)
	}
	e.hold = hold
	e.self = rendezvous.Node{
		ID:   nodeID(cfg.LocalAddr, os.Getpid(), int64(e.lease)),
		Addr: cfg.LocalAddr, Host: cfg.Host, NProc: cfg.NProc, Port: port,
	}
	if err := checkNode(e.self); err != nil {
		e.Close()
		return nil, fmt.Errorf("rendezvous: this node: %w", err)
	}
	return e, nil
}

// connect checks that etcd answers and takes the lease.
func (e *Rendezvous) connect(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, e.cfg.ConnectTimeout)
	defer cancel()
	ttl := max(int64((e.cfg.LeaseTTL+time.Second-1)/time.Second), 1)
	lease, err := e.cli.Grant(cctx, ttl)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &ConnectError{Endpoints: e.cfg.Endpoints, Timeout: e.cfg.ConnectTimeout, Err: err}
	}
	e.lease = lease.ID
	kctx, kcancel := context.WithCancel(context.Background())
	ka, err := e.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		kcancel()
		return fmt.Errorf("rendezvous: keep the etcd lease alive: %w", err)
	}
	e.kaCancel, e.kaDone = kcancel, make(chan struct{})
	go e.keepAlive(kctx, ka)
	return nil
}

// keepAlive drains the lease's keep-alive responses. The channel closes
// when the lease is gone for good (etcd unreachable for longer than the
// TTL): a warning says what the node still detects.
func (e *Rendezvous) keepAlive(ctx context.Context, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	defer close(e.kaDone)
	for range ka {
	}
	if ctx.Err() == nil {
		e.leaseLost.Store(true)
		fmt.Fprintf(e.cfg.Notes, "mpspawn: warning: rendezvous %s: lost the etcd lease (etcd unreachable for longer than the lease TTL %v); the ranks carry on and failures still stop every node once etcd is back, but a lost node is no longer noticed\n", e.cfg.RunID, e.cfg.LeaseTTL)
	}
}

// Self is this node as it joins rounds.
func (e *Rendezvous) Self() rendezvous.Node { return e.self }

func (e *Rendezvous) key(parts ...string) string { return e.prefix + strings.Join(parts, "/") }

func (e *Rendezvous) roundKey(n int, parts ...string) string {
	return e.key(append([]string{"r", fmt.Sprintf("%08d", n)}, parts...)...)
}

// parseRoundKey splits a key of the run into its round number and the
// rest ("join/<id>", "members", ...); ok is false for other keys.
func (e *Rendezvous) parseRoundKey(key string) (n int, rest string, ok bool) {
	s, found := strings.CutPrefix(key, e.prefix+"r/")
	if !found {
		return 0, "", false
	}
	num, rest, found := strings.Cut(s, "/")
	if !found {
		return 0, "", false
	}
	n, err := strconv.Atoi(num)
	return n, rest, err == nil
}

// Close stops the round's watcher, revokes the lease (the node's keys go
// at once) and closes the connection and the port reservation.
func (e *Rendezvous) Close() error {
	e.closeOnce.Do(func() {
		e.stopWatch()
		if e.kaCancel != nil {
			e.kaCancel()
			<-e.kaDone
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = e.cli.Revoke(ctx, e.lease) // else it expires within the TTL
			cancel()
		}
		e.closeErr = e.cli.Close()
		if e.hold != nil {
			e.hold.Close()
		}
	})
	if e.closeErr != nil && !errors.Is(e.closeErr, context.Canceled) {
		return fmt.Errorf("rendezvous: close etcd client: %w", e.closeErr)
	}
	return nil
}

// End closes the run with status unless it is closed already. The run's
// keys go with it: "closed" (with the round's failure, which it vouches
// for) lives on a lease of its own for tombTTL, so that a node arriving
// late is told the run ended; the keys on no lease (members, done marks)
// are deleted; the rest are on the nodes' leases and go with them.
func (e *Rendezvous) End(ctx context.Context, status string) error {
	k := e.key("closed")
	tomb, err := e.cli.Grant(ctx, int64(e.tombTTL()/time.Second))
	if err != nil {
		return fmt.Errorf("rendezvous: close run %s: %w", e.cfg.RunID, err)
	}
	ops := []clientv3.Op{clientv3.OpPut(k, status, clientv3.WithLease(tomb.ID))}
	if e.round >= 0 {
		fk := e.roundKey(e.round, "fail")
		if resp, err := e.cli.Get(ctx, fk); err == nil && len(resp.Kvs) > 0 {
			if _, err := parseFailure(resp.Kvs[0], e.last, 0); err == nil {
				ops = append(ops, clientv3.OpPut(fk, string(resp.Kvs[0].Value), clientv3.WithLease(tomb.ID)))
			}
		}
	}
	resp, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("rendezvous: close run %s: %w", e.cfg.RunID, err)
	}
	if !resp.Succeeded {
		_, _ = e.cli.Revoke(ctx, tomb.ID)
	}
	return e.deleteLeaseless(ctx)
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
	keys, _, _, err := e.readRun(ctx, 0, func(*mvccpb.KeyValue) bool { return false })
	if err != nil {
		return fmt.Errorf("rendezvous: clean up run %s: %w", e.cfg.RunID, err)
	}
	var ops []clientv3.Op
	for _, kv := range keys {
		if kv.Lease == 0 {
			// Only if it is still on no lease: a key written again since
			// the read is someone else's to remove.
			ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)},
				[]clientv3.Op{clientv3.OpDelete(string(kv.Key))}, nil))
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
	return e.publishFailure(ctx, e.last, f)
}

// publishFailure writes f as round r's failure, on this node's lease, unless
// the round has one: it then returns that one. A failure record that fails
// verification does not count: f is written over it.
func (e *Rendezvous) publishFailure(ctx context.Context, r rendezvous.Round, f rendezvous.Failure) (rendezvous.Failure, error) {
	k := e.roundKey(r.Number, "fail")
	f.Message = truncateMessage(f.Message)
	b, err := json.Marshal(f)
	if err != nil {
		return rendezvous.Failure{}, err
	}
	var bad int64 // the revision of a record that failed verification
	for range 3 {
		resp, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", bad)).
			Then(clientv3.OpPut(k, string(b), clientv3.WithLease(e.lease))).Else(clientv3.OpGet(k)).Commit()
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
		first, err := parseFailure(kvs[0], r, 0)
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

// Finish marks this node done in the current round and waits, bounded by
// CloseTimeout, for every other node to be done, or for the round's
// failure. Marking the node done counts against the same bound: with etcd
// unreachable for that long, the node says so and stops waiting.
func (e *Rendezvous) Finish(ctx context.Context) (*rendezvous.Stop, error) {
	w := e.cur
	if w == nil {
		return nil, nil
	}
	deadline := time.Now().Add(e.cfg.CloseTimeout)
	pctx, cancel := context.WithDeadline(ctx, deadline)
	_, err := e.cli.Put(pctx, e.roundKey(e.round, "done", e.self.ID), "")
	cancel()
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		fmt.Fprintf(e.cfg.Notes, "mpspawn: warning: rendezvous %s: this node's ranks succeeded; could not tell the other nodes within %v (close_timeout): %v; not waiting for them\n", e.cfg.RunID, e.cfg.CloseTimeout, err)
		return nil, nil
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
			return nil, nil
		case <-stopped:
			if s := w.first; s.Failure != nil || s.Reason == rendezvous.ReasonClosed {
				return &s, nil
			}
			// A node waiting to join: this node has finished; the others
			// decide.
			stopped = nil
		case <-t.C:
			fmt.Fprintf(e.cfg.Notes, "mpspawn: warning: rendezvous %s: this node's ranks succeeded; other nodes still running after %v (close_timeout), not waiting longer\n", e.cfg.RunID, e.cfg.CloseTimeout)
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// WaitLeft waits, bounded by ctx, until every other node has left the run
// (its lease is gone): the node that hosts the etcd server stops it only
// then, so that no node loses etcd while it closes.
func (e *Rendezvous) WaitLeft(ctx context.Context) {
	if e.round < 0 {
		return
	}
	prefix := e.roundKey(e.round, "join") + "/"
	resp, err := e.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
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
	for wr := range e.cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				delete(left, strings.TrimPrefix(string(ev.Kv.Key), prefix))
			}
		}
		if len(left) == 0 || wr.Err() != nil {
			return
		}
	}
}
