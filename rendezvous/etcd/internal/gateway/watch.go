package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// The types of a watch's events.
const (
	EventTypePut    = "PUT"
	EventTypeDelete = "DELETE"
)

// Event is one change of a watched key.
type Event struct {
	Type string    `json:"type"` // EventTypePut or EventTypeDelete
	Kv   *KeyValue `json:"kv"`
}

// WatchResponse is one batch of a watch's events, or the watch's end.
type WatchResponse struct {
	Header          ResponseHeader
	Events          []*Event
	CompactRevision int64 // the watch's start was compacted: it ended
	Canceled        bool  // etcd ended the watch
	Created         bool  // etcd created the watch (WithCreatedNotify)

	err error
}

// Err is why the watch ended, or nil.
func (wr WatchResponse) Err() error {
	switch {
	case wr.err != nil:
		return wr.err
	case wr.CompactRevision != 0:
		return ErrCompacted
	}
	return nil
}

// WatchChan delivers a watch's responses; it closes when the watch ends.
type WatchChan <-chan WatchResponse

type leaderKey struct{}

// WithRequireLeader is ctx for a watch that etcd ends while it has no
// leader.
func WithRequireLeader(ctx context.Context) context.Context {
	return context.WithValue(ctx, leaderKey{}, true)
}

// Watch follows the changes of key (or, with options, a range of keys)
// until ctx ends or the client closes. A broken connection is made again,
// from the revision after the last one delivered. When etcd ends the
// watch (a compacted start, a refusal), the last response says why.
func (c *Client) Watch(ctx context.Context, key string, opts ...OpOption) WatchChan {
	return c.WatchOps(ctx, OpGet(key, opts...))
}

// WatchOps is several watches on one stream, made by OpGet with watch
// options: etcd sends their events in the order it committed them, across
// the watches too (separate streams would not keep that order). With
// WithCreatedNotify on one of them, the first response says that etcd
// created them all. When etcd ends one, the stream ends.
func (c *Client) WatchOps(ctx context.Context, ops ...Op) WatchChan {
	ch := make(chan WatchResponse)
	leader, _ := ctx.Value(leaderKey{}).(bool)
	w := &watcher{c: c, ops: ops, leader: leader, out: ch}
	for _, op := range ops {
		w.notify = w.notify || op.createdNotify
	}
	c.wg.Go(func() {
		defer close(ch)
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(c.ctx, cancel)
		defer stop()
		w.run(ctx)
	})
	return ch
}

// createBound bounds etcd's creation of a stream's watches: a stream that
// has not said it created them all by then is made again.
const createBound = 10 * time.Second

// watcher is one WatchOps's state.
type watcher struct {
	c      *Client
	ops    []Op // each op's rev: where its watch resumes
	leader bool
	notify bool // tell of the creation (once)
	out    chan<- WatchResponse
	ran    bool // a stream had its watches created
}

// run keeps a watch stream open until ctx ends or etcd ends a watch.
func (w *watcher) run(ctx context.Context) {
	for wait := 50 * time.Millisecond; ; {
		err := w.stream(ctx)
		if ctx.Err() != nil || errors.Is(err, errEnded) {
			return
		}
		if !errors.Is(err, errBroken) {
			w.send(ctx, WatchResponse{Canceled: true, err: err})
			return
		}
		if w.ran {
			w.ran, wait = false, 50*time.Millisecond // it ran: again at once
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

var (
	// errEnded is a watch that etcd ended and whose end was delivered.
	errEnded = errors.New("etcd gateway: watch ended")
	// errBroken is a stream that broke: it is made again. So is one
	// that etcd's gateway ended with an error of its own (etcd stopping:
	// the gateway's connection to the server closing), as etcd's own
	// client does; a refusal comes as a watch etcd ended, with its reason.
	errBroken = errors.New("etcd gateway: watch stream broken")
)

// createRequest is the JSON of a watch's creation.
type createRequest struct {
	Key           []byte   `json:"key"`
	RangeEnd      []byte   `json:"range_end,omitempty"`
	StartRevision int64    `json:"start_revision,omitempty,string"`
	Filters       []string `json:"filters,omitempty"`
}

func (op Op) createRequest() createRequest {
	r := createRequest{Key: []byte(op.key), StartRevision: op.rev}
	if op.end != "" {
		r.RangeEnd = []byte(op.end)
	}
	if op.filterPut {
		r.Filters = append(r.Filters, "NOPUT")
	}
	if op.filterDelete {
		r.Filters = append(r.Filters, "NODELETE")
	}
	return r
}

// watchResult is one message of a watch stream.
type watchResult struct {
	Result *struct {
		Header          ResponseHeader `json:"header"`
		WatchID         int64          `json:"watch_id,string"`
		Created         bool           `json:"created"`
		Canceled        bool           `json:"canceled"`
		CompactRevision int64          `json:"compact_revision,string"`
		CancelReason    string         `json:"cancel_reason"`
		Events          []*Event       `json:"events"`
	} `json:"result"`
	Error *streamError `json:"error"`
}

// stream opens one watch stream, with a creation request per op in its
// body (etcd creates them in order, and numbers each stream's watches
// from 0), and delivers its responses until it breaks (an error) or etcd
// ends a watch (errEnded).
func (w *watcher) stream(ctx context.Context) error {
	var body []byte
	for _, op := range w.ops {
		b, _ := json.Marshal(map[string]any{"create_request": op.createRequest()})
		body = append(body, b...)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := w.c.post(ctx, request{path: "/v3/watch", body: body, leader: w.leader})
	var gerr *Error
	switch {
	case errors.As(err, &gerr) && !gerr.transient():
		return err // etcd refused the request
	case err != nil:
		return fmt.Errorf("%w: %v", errBroken, err)
	}
	defer resp.Body.Close() // a stream does not end: closing drops the connection
	slow := time.AfterFunc(createBound, cancel)
	defer slow.Stop()
	dec := json.NewDecoder(resp.Body)
	idx := map[int64]int{}    // watch id → op
	var early []WatchResponse // events before the creation was told
	for {
		var m watchResult
		if err := dec.Decode(&m); err != nil {
			return fmt.Errorf("%w: %v", errBroken, err)
		}
		if m.Error != nil {
			return fmt.Errorf("%w: %v", errBroken, m.Error.err())
		}
		r := m.Result
		switch {
		case r == nil:
		case r.Canceled:
			wr := WatchResponse{Header: r.Header, Canceled: true, CompactRevision: r.CompactRevision}
			if r.CancelReason != "" {
				wr.err = messageError(0, r.CancelReason)
			}
			w.send(ctx, wr)
			return errEnded
		case r.Created:
			i := len(idx)
			if i >= len(w.ops) {
				return fmt.Errorf("etcd gateway: watch: %d watches created, %d asked for", i+1, len(w.ops))
			}
			idx[r.WatchID] = i
			if w.ops[i].rev == 0 {
				w.ops[i].rev = r.Header.Revision + 1 // a new stream resumes from here
			}
			if len(idx) == len(w.ops) {
				slow.Stop()
				if w.notify {
					w.notify = false
					w.send(ctx, WatchResponse{Header: r.Header, Created: true})
				}
				for _, wr := range early {
					w.send(ctx, wr)
				}
				early, w.ran = nil, true
			}
		case len(r.Events) > 0:
			i, ok := idx[r.WatchID]
			if !ok {
				return fmt.Errorf("etcd gateway: watch: events of watch %d, not created", r.WatchID)
			}
			for _, ev := range r.Events {
				if ev.Type == "" {
					ev.Type = EventTypePut
				}
			}
			w.ops[i].rev = r.Events[len(r.Events)-1].Kv.ModRevision + 1
			wr := WatchResponse{Header: r.Header, Events: r.Events}
			if w.notify {
				early = append(early, wr) // after the creation's response
				continue
			}
			w.send(ctx, wr)
		}
	}
}

func (w *watcher) send(ctx context.Context, wr WatchResponse) {
	select {
	case w.out <- wr:
	case <-ctx.Done():
	}
}
