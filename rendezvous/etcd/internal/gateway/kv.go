package gateway

import (
	"context"
	"fmt"
)

// KeyValue is a key as etcd holds it.
type KeyValue struct {
	Key            []byte `json:"key"`
	Value          []byte `json:"value"`
	CreateRevision int64  `json:"create_revision,string"`
	ModRevision    int64  `json:"mod_revision,string"`
	Version        int64  `json:"version,string"`
	Lease          int64  `json:"lease,string"`
}

// GetResponse is the answer to a Get, or to a get in a Txn.
type GetResponse struct {
	Header *ResponseHeader `json:"header"`
	Kvs    []*KeyValue     `json:"kvs"`
	More   bool            `json:"more"`
	Count  int64           `json:"count,string"`
}

// PutResponse is the answer to a Put.
type PutResponse struct {
	Header *ResponseHeader `json:"header"`
}

// DeleteResponse is the answer to a Delete.
type DeleteResponse struct {
	Header  *ResponseHeader `json:"header"`
	Deleted int64           `json:"deleted,string"`
}

// TxnResponse is the answer to a Txn: whether its comparisons held, and
// the answers of the operations it ran, in order.
type TxnResponse struct {
	Header    *ResponseHeader `json:"header"`
	Succeeded bool            `json:"succeeded"`
	Responses []*ResponseOp   `json:"responses"`
}

// ResponseOp is the answer of one operation of a Txn.
type ResponseOp struct {
	ResponseRange       *GetResponse    `json:"response_range,omitempty"`
	ResponsePut         *PutResponse    `json:"response_put,omitempty"`
	ResponseDeleteRange *DeleteResponse `json:"response_delete_range,omitempty"`
	ResponseTxn         *TxnResponse    `json:"response_txn,omitempty"`
}

// GetResponseRange is the answer of a get; nil for other operations.
func (r *ResponseOp) GetResponseRange() *GetResponse {
	if r == nil || r.ResponseRange == nil {
		return &GetResponse{}
	}
	return r.ResponseRange
}

// GetResponseTxn is the answer of a nested Txn.
func (r *ResponseOp) GetResponseTxn() *TxnResponse {
	if r == nil || r.ResponseTxn == nil {
		return &TxnResponse{}
	}
	return r.ResponseTxn
}

// Get reads key (or, with options, a range of keys).
func (c *Client) Get(ctx context.Context, key string, opts ...OpOption) (*GetResponse, error) {
	op := OpGet(key, opts...)
	var out GetResponse
	if err := c.call(ctx, "/v3/kv/range", op.rangeRequest(), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Put writes val at key.
func (c *Client) Put(ctx context.Context, key, val string, opts ...OpOption) (*PutResponse, error) {
	op := OpPut(key, val, opts...)
	var out PutResponse
	if err := c.call(ctx, "/v3/kv/put", op.putRequest(), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Delete removes key (or, with options, a range of keys).
func (c *Client) Delete(ctx context.Context, key string, opts ...OpOption) (*DeleteResponse, error) {
	op := OpDelete(key, opts...)
	var out DeleteResponse
	if err := c.call(ctx, "/v3/kv/deleterange", op.deleteRequest(), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Txn is an etcd transaction: If its comparisons all hold, Then's
// operations run, else Else's; Commit sends it. As clientv3's, If, Then
// and Else may each be called once, in that order.
type Txn struct {
	c                *Client
	ctx              context.Context
	cmps             []Cmp
	thenOps, elseOps []Op
}

// Txn starts a transaction.
func (c *Client) Txn(ctx context.Context) *Txn { return &Txn{c: c, ctx: ctx} }

// If sets the comparisons.
func (t *Txn) If(cs ...Cmp) *Txn { t.cmps = cs; return t }

// Then sets the operations that run when the comparisons hold.
func (t *Txn) Then(ops ...Op) *Txn { t.thenOps = ops; return t }

// Else sets the operations that run when one does not.
func (t *Txn) Else(ops ...Op) *Txn { t.elseOps = ops; return t }

// Commit sends the transaction.
func (t *Txn) Commit() (*TxnResponse, error) {
	var out TxnResponse
	if err := t.c.call(t.ctx, "/v3/kv/txn", txnRequest(t.cmps, t.thenOps, t.elseOps), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Cmp is one comparison of a Txn: a key's (or a range's) revision,
// version, value or lease against a value.
type Cmp struct {
	Key            []byte `json:"key"`
	RangeEnd       []byte `json:"range_end,omitempty"`
	Target         string `json:"target"`
	Result         string `json:"result"`
	CreateRevision *int64 `json:"create_revision,omitempty,string"`
	ModRevision    *int64 `json:"mod_revision,omitempty,string"`
	Lease          *int64 `json:"lease,omitempty,string"`
	Value          []byte `json:"value,omitempty"`
}

// CreateRevision compares key's create revision (0: the key is not there).
func CreateRevision(key string) Cmp { return Cmp{Key: []byte(key), Target: "CREATE"} }

// ModRevision compares key's last revision.
func ModRevision(key string) Cmp { return Cmp{Key: []byte(key), Target: "MOD"} }

// Value compares key's value.
func Value(key string) Cmp { return Cmp{Key: []byte(key), Target: "VALUE"} }

// LeaseValue compares the lease key is on (0: none).
func LeaseValue(key string) Cmp { return Cmp{Key: []byte(key), Target: "LEASE"} }

// WithPrefix makes the comparison hold for every key with cmp's key as
// prefix.
func (cmp Cmp) WithPrefix() Cmp {
	cmp.RangeEnd = []byte(prefixEnd(string(cmp.Key)))
	return cmp
}

// Compare completes cmp: its target against v, with result one of "=",
// "!=", "<" and ">". v is a string for Value, else an integer (int, int64
// or LeaseID).
func Compare(cmp Cmp, result string, v any) Cmp {
	switch result {
	case "=":
		cmp.Result = "EQUAL"
	case "!=":
		cmp.Result = "NOT_EQUAL"
	case "<":
		cmp.Result = "LESS"
	case ">":
		cmp.Result = "GREATER"
	default:
		panic(fmt.Sprintf("etcd gateway: unknown comparison %q", result))
	}
	if cmp.Target == "VALUE" {
		s, ok := v.(string)
		if !ok {
			panic(fmt.Sprintf("etcd gateway: compare a value with %T", v))
		}
		cmp.Value = []byte(s)
		return cmp
	}
	var n int64
	switch x := v.(type) {
	case int:
		n = int64(x)
	case int64:
		n = x
	case LeaseID:
		n = int64(x)
	default:
		panic(fmt.Sprintf("etcd gateway: compare %s with %T", cmp.Target, v))
	}
	switch cmp.Target {
	case "CREATE":
		cmp.CreateRevision = &n
	case "MOD":
		cmp.ModRevision = &n
	case "LEASE":
		cmp.Lease = &n
	}
	return cmp
}

// Compact drops the history before revision rev: reads and watches at
// older revisions fail with ErrCompacted.
func (c *Client) Compact(ctx context.Context, rev int64) error {
	in := struct {
		Revision int64 `json:"revision,string"`
		Physical bool  `json:"physical"`
	}{rev, true}
	return c.call(ctx, "/v3/kv/compaction", in, &struct{}{})
}
