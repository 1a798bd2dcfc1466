// Package etcd is the etcd v3 rendezvous of multi-node jobs: nodes join a
// run's rounds under a per-run key prefix, each holding a lease kept alive,
// and learn of every other node's failure, loss or arrival through watches.
// It implements rendezvous.Rendezvous; it lives apart from package
// rendezvous so that programs that never go multi-node (every Go API
// program, whose ranks re-execute it) do not link it.
//
// It speaks to etcd through etcd's JSON gateway (package gateway, on
// net/http), not through go.etcd.io/etcd/client/v3: that client brings
// grpc and protobuf, whose package init every start of the launcher paid,
// single-node jobs too (Go cannot defer a linked package's init), and 8 MB
// of binary.
package etcd

import (
	"context"
	"crypto/tls"
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
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
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
	// Position is this node's place in the order of node ranks, from 1
	// to MaxNodes (a host list's line); 0: none. The coordinator orders
	// the nodes by position, then those without one, each by id; two
	// nodes at one position are ordered by id, with a warning.
	Position int

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
	// LossStopsRound is set when the etcd server lives and dies with a
	// node of the job (c10d): losing etcd for longer than the lease TTL
	// is then that node's loss, and stops the round's ranks. Otherwise
	// the ranks carry on, but the node can no longer confirm the job's
	// result.
	LossStopsRound bool

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
//	r/<round>/join/<node>     the node's Node, on its lease
//	r/<round>/coord           the id of the node that coordinates the round, on its lease
//	r/<round>/members         the round's header: restart count, coordinator, node 0,
//	                          each shard's first id and rank; on the coordinator's lease
//	r/<round>/members/<k>     shard k of the nodes by node rank, with the header
//	r/<round>/fail            the round's first Failure
//	r/<round>/done/<node>     the node's ranks all succeeded
//	r/<round>/flag/alldone    node 0 (the aggregator): every member is done
//	r/<round>/flag/change     node 0: a node is waiting to join the next round
//	closed                    the run's end: "succeeded" or "failed"
//
// Only the coordinator follows the joins, and only node 0 the members'
// done marks and leases: every other node hears of a round's start, its
// failure, its end and every member done with one event each, so that the
// job's etcd traffic is O(N) events, not O(N²).
//
// A Rendezvous is used by one launcher goroutine at a time, except Stopped's
// channel.
type Rendezvous struct {
	cfg    Config
	cli    *gateway.Client
	lease  gateway.LeaseID
	self   rendezvous.Node
	prefix string

	hold *os.File // the master port this node reserved

	kaCancel context.CancelFunc
	kaDone   chan struct{}

	round int              // the current round's number; -1 before the first
	last  rendezvous.Round // the round this node last started
	mem   *members         // and its members
	cur   *roundWatch      // the current round's watcher, nil between rounds

	warned sync.Map // keys ignored with a warning already

	closeOnce sync.Once
	closeErr  error

	// leaseLost is set, and lost closed, once the lease could not be
	// kept alive (etcd away for longer than the TTL): every node's lease
	// has then expired or will, so a node's keys going no longer means the
	// node is lost, and nothing this node reads or writes can confirm the
	// job's result any more.
	leaseLost atomic.Bool
	lost      chan struct{}
	loseOnce  sync.Once
}

// New connects to etcd (failing within ConnectTimeout with a
// *ConnectError), takes a lease and reserves a master port for the case
// that this node becomes node 0. It does not join a round: Next does.
func New(ctx context.Context, cfg Config) (*Rendezvous, error) {
	cfg.defaults()
	if cfg.Position < 0 || cfg.Position > cfg.MaxNodes {
		return nil, fmt.Errorf("rendezvous: this node: position %d out of range [0, %d]", cfg.Position, cfg.MaxNodes)
	}
	if cfg.Server != nil {
		if err := waitServer(ctx, &cfg); err != nil {
			return nil, err
		}
	}
	cli, err := gateway.New(clientConfig(&cfg))
	if err != nil {
		return nil, &ConnectError{Endpoints: cfg.Endpoints, Timeout: cfg.ConnectTimeout, Err: err}
	}
	e := &Rendezvous{cfg: cfg, cli: cli, prefix: cfg.Prefix + cfg.RunID + "/", round: -1, lost: make(chan struct{})}
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
		Addr: cfg.LocalAddr, Host: cfg.Host, NProc: cfg.NProc, Port: port, Position: cfg.Position,
	}
	if err := checkNode(e.self, cfg.MaxNodes); err != nil {
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
// TTL): lost is closed then.
func (e *Rendezvous) keepAlive(ctx context.Context, ka <-chan *gateway.LeaseKeepAliveResponse) {
	defer close(e.kaDone)
	for range ka {
	}
	if ctx.Err() != nil {
		return
	}
	e.lose()
}

// lose records etcd's loss: the round's watcher, if one runs, says what
// follows, and every wait on etcd ends.
func (e *Rendezvous) lose() {
	e.loseOnce.Do(func() {
		e.leaseLost.Store(true)
		close(e.lost)
	})
}

// ServerGone tells the rendezvous that its etcd server is gone for good
// (the one this node hosts exited): it acts at once as it does when the
// lease is lost.
func (e *Rendezvous) ServerGone() { e.lose() }

// LostError is etcd lost for longer than the lease TTL: this node's lease
// expired, and with it what it could learn from or tell the other nodes.
type LostError struct {
	RunID     string
	Endpoints []string
	TTL       time.Duration
}

func (e *LostError) Error() string {
	return fmt.Sprintf("rendezvous: %s: lost etcd at %s (unreachable for longer than the lease TTL %v)", e.RunID, strings.Join(e.Endpoints, ","), e.TTL)
}

func (e *Rendezvous) lostError() error {
	return &LostError{RunID: e.cfg.RunID, Endpoints: e.cfg.Endpoints, TTL: e.cfg.LeaseTTL}
}

// opCtx is ctx, cancelled too when the lease is lost: an etcd call made
// with it does not outlive the node's knowledge that etcd is gone.
func (e *Rendezvous) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	octx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-e.lost:
			cancel()
		case <-octx.Done():
		}
	}()
	return octx, cancel
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
		}
		if e.kaCancel != nil && !e.leaseLost.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = e.cli.Revoke(ctx, e.lease) // else it expires within the TTL
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
