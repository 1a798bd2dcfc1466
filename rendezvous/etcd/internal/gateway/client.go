// Package gateway is an etcd v3 client that speaks to etcd's JSON gateway:
// the grpc-gateway that every etcd from 3.4 on serves on its client URLs
// under /v3/ (kv/range, kv/put, kv/txn, watch, lease/grant, lease/keepalive,
// auth/...). It offers the part of go.etcd.io/etcd/client/v3's API that the
// rendezvous uses, with the same names and meanings, over net/http and
// encoding/json alone, so that the launcher links no gRPC and no protobuf:
// their package init (1.5 to 4 ms) would be paid by every job, also the
// single-node ones that never reach etcd.
//
// Every call is bounded by its context. A call that cannot reach any
// endpoint is retried, with backoff, until its context ends (the request
// was never sent, so this is safe for writes too); an error etcd returns
// is an *Error, which errors.Is matches against the sentinels (ErrCompacted,
// ErrAuthFailed, ...). A watch reconnects by itself and resumes after the
// last revision it delivered, as clientv3's do.
package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Config is how a Client reaches etcd.
type Config struct {
	// Endpoints are the etcd client URLs, or host:port (then http://, or
	// https:// with TLS).
	Endpoints []string
	// DialTimeout bounds each connection attempt (default 5 s).
	DialTimeout time.Duration
	TLS         *tls.Config
	// Username and Password, when set, authenticate every call: the
	// client logs in at its first call, and again when etcd says the
	// token expired.
	Username, Password string
}

// Client is a connection pool to the endpoints of one etcd cluster. Its
// methods may be called from several goroutines. A Client cannot be used
// after Close.
type Client struct {
	cfg  Config
	urls []string
	http *http.Client

	mu     sync.Mutex
	cur    int    // the endpoint in use
	token  string // the auth token, "" before the first login
	logged bool   // logged in, or etcd said its authentication is off

	ttls sync.Map // LeaseID → TTL in seconds, of the leases Grant gave

	ctx    context.Context // cancelled by Close: ends the watches and keep-alives
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New makes a client of cfg's endpoints. It does not connect: the first
// call does.
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd gateway: no endpoints")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	c := &Client{cfg: cfg}
	for _, ep := range cfg.Endpoints {
		u := strings.TrimSuffix(ep, "/")
		if !strings.Contains(u, "://") {
			if cfg.TLS != nil {
				u = "https://" + u
			} else {
				u = "http://" + u
			}
		}
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("etcd gateway: endpoint %q: not an http or https URL", ep)
		}
		c.urls = append(c.urls, u)
	}
	dialer := &net.Dialer{
		Timeout: cfg.DialTimeout,
		// Find a dead connection within about 3 s: an etcd that went
		// away must not stall the watches for long.
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 2},
	}
	c.http = &http.Client{Transport: &http.Transport{
		DialContext:         dialer.DialContext,
		TLSClientConfig:     cfg.TLS,
		TLSHandshakeTimeout: cfg.DialTimeout,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Close ends the client's watches and keep-alives, waits for them, and
// closes its idle connections.
func (c *Client) Close() error {
	c.cancel()
	c.wg.Wait()
	c.http.CloseIdleConnections()
	return nil
}

// ResponseHeader is what etcd says of its state with each answer.
type ResponseHeader struct {
	ClusterID uint64 `json:"cluster_id,string"`
	MemberID  uint64 `json:"member_id,string"`
	Revision  int64  `json:"revision,string"`
	RaftTerm  uint64 `json:"raft_term,string"`
}

// call posts in as JSON to path and decodes the answer into out.
func (c *Client) call(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("etcd gateway: %s: %w", path, err)
	}
	resp, err := c.post(ctx, request{path: path, body: body})
	if err != nil {
		return err
	}
	defer drain(resp.Body)
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out); err != nil {
		return fmt.Errorf("etcd gateway: %s: read the answer: %w", path, err)
	}
	return nil
}

// maxAnswer bounds what a call reads of etcd's answer: a longer one fails
// to decode. etcd's own bound on a request is 1.5 MiB; the rendezvous
// bounds its reads far below this.
const maxAnswer = 64 << 20

// request is one POST to etcd.
type request struct {
	path string
	body []byte
	// leader: etcd refuses the call while it has no leader.
	leader bool
	// anon: without the token (the login itself).
	anon bool
}

// post sends r and returns etcd's answer once it says 200: it tries each
// endpoint in turn, and again with backoff while none can be dialled,
// until ctx ends; it logs in again once when etcd says the token is no
// longer valid. An answer other than 200 is an *Error.
func (c *Client) post(ctx context.Context, r request) (*http.Response, error) {
	if !r.anon {
		if err := c.login(ctx, false); err != nil {
			return nil, err
		}
	}
	path := r.path
	relogged := false
	var dialErr error
	for wait := 10 * time.Millisecond; ; {
		url, token, idx := c.endpoint()
		if r.anon {
			token = ""
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+path, bytes.NewReader(r.body))
		if err != nil {
			return nil, fmt.Errorf("etcd gateway: %s: %w", path, err)
		}
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", token)
		}
		if r.leader {
			// grpc-gateway passes Grpc-Metadata-* on as gRPC
			// metadata: etcd refuses the watch while it has no leader.
			req.Header.Set("Grpc-Metadata-Hasleader", "true")
		}
		resp, err := c.http.Do(req)
		switch {
		case err == nil && resp.StatusCode == http.StatusOK:
			return resp, nil
		case err == nil:
			gerr := readError(resp)
			stale := errors.Is(gerr, ErrInvalidAuthToken) || errors.Is(gerr, ErrUserEmpty)
			if stale && c.cfg.Username != "" && !r.anon && !relogged {
				relogged = true
				if err := c.login(ctx, true); err != nil {
					return nil, err
				}
				continue
			}
			return nil, gerr
		case ctx.Err() != nil:
			if dialErr != nil {
				return nil, fmt.Errorf("etcd gateway: %s: %w (last: %v)", path, ctx.Err(), dialErr)
			}
			return nil, fmt.Errorf("etcd gateway: %s: %w", path, ctx.Err())
		case !isDialError(err):
			return nil, fmt.Errorf("etcd gateway: %s: %w", path, err)
		}
		dialErr = err
		if c.next(idx) {
			continue // another endpoint may answer at once
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
			wait = min(2*wait, 500*time.Millisecond)
		}
	}
}

// endpoint is the URL in use, the token and the endpoint's index.
func (c *Client) endpoint() (url, token string, idx int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.urls[c.cur], c.token, c.cur
}

// next moves on from endpoint idx, which failed; it reports whether
// another endpoint is left to try before all have been.
func (c *Client) next(idx int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == idx {
		c.cur = (c.cur + 1) % len(c.urls)
	}
	return c.cur != 0
}

// isDialError reports whether err is a failure to connect: the request
// never reached etcd.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// login authenticates as cfg.Username unless the client has logged in
// (or, with again, always). An etcd whose authentication is off is used
// without a token, as etcd's own client does, until it says that it needs
// one.
func (c *Client) login(ctx context.Context, again bool) error {
	if c.cfg.Username == "" {
		return nil
	}
	c.mu.Lock()
	logged := c.logged
	c.mu.Unlock()
	if logged && !again {
		return nil
	}
	body, _ := json.Marshal(struct {
		Name     string `json:"name"`
		Password string `json:"password"`
	}{c.cfg.Username, c.cfg.Password})
	var out struct {
		Token string `json:"token"`
	}
	resp, err := c.post(ctx, request{path: "/v3/auth/authenticate", body: body, anon: true})
	switch {
	case errors.Is(err, ErrAuthNotEnabled):
	case err != nil:
		return err
	default:
		defer drain(resp.Body)
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return fmt.Errorf("etcd gateway: log in: %w", err)
		}
	}
	c.mu.Lock()
	c.token, c.logged = out.Token, true
	c.mu.Unlock()
	return nil
}

// drain reads what is left of a body, so that its connection is reused.
func drain(r io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r, 64<<10))
	r.Close()
}
