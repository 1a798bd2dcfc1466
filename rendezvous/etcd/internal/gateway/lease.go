package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// LeaseID is an etcd lease.
type LeaseID int64

// LeaseGrantResponse is the answer to Grant.
type LeaseGrantResponse struct {
	Header *ResponseHeader `json:"header"`
	ID     LeaseID         `json:"ID,string"`
	TTL    int64           `json:"TTL,string"`
	Error  string          `json:"error"`
}

// LeaseKeepAliveResponse is one renewal of a lease.
type LeaseKeepAliveResponse struct {
	Header *ResponseHeader `json:"header"`
	ID     LeaseID         `json:"ID,string"`
	TTL    int64           `json:"TTL,string"`
}

// Grant takes a lease of ttl seconds.
func (c *Client) Grant(ctx context.Context, ttl int64) (*LeaseGrantResponse, error) {
	in := struct {
		TTL int64 `json:"TTL,string"`
	}{ttl}
	var out LeaseGrantResponse
	if err := c.call(ctx, "/v3/lease/grant", in, &out); err != nil {
		return nil, err
	}
	if out.Error != "" {
		return nil, &Error{Message: out.Error}
	}
	c.ttls.Store(out.ID, out.TTL)
	return &out, nil
}

// Revoke ends lease id at once: its keys go.
func (c *Client) Revoke(ctx context.Context, id LeaseID) error {
	in := struct {
		ID LeaseID `json:"ID,string"`
	}{id}
	var out struct{}
	return c.call(ctx, "/v3/lease/revoke", in, &out)
}

// KeepAlive renews lease id every third of its TTL until ctx ends or the
// client closes, and sends each renewal on the channel it returns (it
// drops those the reader is not ready for). The channel closes when ctx
// ends, when etcd says the lease is gone, or when no renewal succeeded
// for a whole TTL: the lease has expired or is about to.
func (c *Client) KeepAlive(ctx context.Context, id LeaseID) (<-chan *LeaseKeepAliveResponse, error) {
	if c.ctx.Err() != nil {
		return nil, errors.New("etcd gateway: keep lease alive: client closed")
	}
	ttl := int64(5)
	if v, ok := c.ttls.Load(id); ok {
		ttl = v.(int64)
	}
	ch := make(chan *LeaseKeepAliveResponse, 1)
	c.wg.Go(func() {
		defer close(ch)
		c.keepAlive(ctx, id, time.Duration(ttl)*time.Second, ch)
	})
	return ch, nil
}

func (c *Client) keepAlive(ctx context.Context, id LeaseID, ttl time.Duration, ch chan<- *LeaseKeepAliveResponse) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	deadline := time.Now().Add(ttl)
	for {
		by := time.Now().Add(max(ttl/3, time.Second))
		if deadline.Before(by) {
			by = deadline
		}
		rctx, rcancel := context.WithDeadline(ctx, by)
		r, err := c.keepAliveOnce(rctx, id)
		rcancel()
		if ctx.Err() != nil {
			return
		}
		next := 200 * time.Millisecond
		switch {
		case err == nil && r.TTL <= 0:
			return // the lease is gone
		case err == nil:
			ttl = time.Duration(r.TTL) * time.Second
			deadline = time.Now().Add(ttl)
			next = ttl / 3
			select {
			case ch <- r:
			default:
			}
		case errors.Is(err, ErrLeaseNotFound):
			return
		case !time.Now().Before(deadline):
			return // no renewal for a whole TTL
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// keepAliveOnce renews the lease once: one message on etcd's keep-alive
// stream, which ends when the request's body does.
func (c *Client) keepAliveOnce(ctx context.Context, id LeaseID) (*LeaseKeepAliveResponse, error) {
	body, _ := json.Marshal(struct {
		ID LeaseID `json:"ID,string"`
	}{id})
	resp, err := c.post(ctx, request{path: "/v3/lease/keepalive", body: body})
	if err != nil {
		return nil, err
	}
	defer drain(resp.Body)
	var m struct {
		Result *LeaseKeepAliveResponse `json:"result"`
		Error  *streamError            `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return nil, fmt.Errorf("etcd gateway: keep lease alive: %w", err)
	}
	if m.Error != nil {
		return nil, m.Error.err()
	}
	if m.Result == nil {
		return nil, errors.New("etcd gateway: keep lease alive: empty answer")
	}
	return m.Result, nil
}
