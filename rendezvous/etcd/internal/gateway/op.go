package gateway

// Op is one operation: a get, put or delete, or a nested transaction;
// options shape it (WithPrefix, WithRev, WithLease, ...). Watch takes the
// same options.
type Op struct {
	t        opType
	key, end string
	val      string
	lease    LeaseID
	rev      int64
	limit    int64

	sortTarget, sortOrder string

	serializable, keysOnly bool

	// watch options
	filterPut, filterDelete, createdNotify bool

	cmps             []Cmp
	thenOps, elseOps []Op
}

type opType int

const (
	tGet opType = iota
	tPut
	tDelete
	tTxn
)

// OpOption shapes an Op.
type OpOption func(*Op)

// OpGet is a get of key.
func OpGet(key string, opts ...OpOption) Op {
	op := Op{t: tGet, key: key}
	op.apply(opts)
	return op
}

// OpPut is a put of val at key.
func OpPut(key, val string, opts ...OpOption) Op {
	op := Op{t: tPut, key: key, val: val}
	op.apply(opts)
	return op
}

// OpDelete is a delete of key.
func OpDelete(key string, opts ...OpOption) Op {
	op := Op{t: tDelete, key: key}
	op.apply(opts)
	return op
}

// OpTxn is a transaction nested in another.
func OpTxn(cmps []Cmp, thenOps, elseOps []Op) Op {
	return Op{t: tTxn, cmps: cmps, thenOps: thenOps, elseOps: elseOps}
}

func (op *Op) apply(opts []OpOption) {
	for _, o := range opts {
		o(op)
	}
}

// WithPrefix makes the operation cover every key with its key as prefix.
func WithPrefix() OpOption {
	return func(op *Op) {
		if op.key == "" {
			op.key, op.end = "\x00", "\x00"
			return
		}
		op.end = prefixEnd(op.key)
	}
}

// WithRange makes the operation cover the keys from its key up to end.
func WithRange(end string) OpOption { return func(op *Op) { op.end = end } }

// WithRev reads (or starts a watch) at revision rev; 0 is the newest.
func WithRev(rev int64) OpOption { return func(op *Op) { op.rev = rev } }

// WithLease puts the key on lease id.
func WithLease(id LeaseID) OpOption { return func(op *Op) { op.lease = id } }

// WithLimit reads at most n keys (0: all).
func WithLimit(n int64) OpOption { return func(op *Op) { op.limit = n } }

// WithKeysOnly reads the keys without their values.
func WithKeysOnly() OpOption { return func(op *Op) { op.keysOnly = true } }

// WithSerializable reads from the member asked, without a round through
// the leader.
func WithSerializable() OpOption { return func(op *Op) { op.serializable = true } }

// The sort targets and orders of WithSort.
const (
	SortByKey   = "KEY"
	SortAscend  = "ASCEND"
	SortDescend = "DESCEND"
)

// WithSort sorts a get's keys by target, in order.
func WithSort(target, order string) OpOption {
	return func(op *Op) { op.sortTarget, op.sortOrder = target, order }
}

// WithFilterPut leaves a watch's puts out.
func WithFilterPut() OpOption { return func(op *Op) { op.filterPut = true } }

// WithFilterDelete leaves a watch's deletes out.
func WithFilterDelete() OpOption { return func(op *Op) { op.filterDelete = true } }

// WithCreatedNotify makes a watch's first response say that etcd created
// the watch.
func WithCreatedNotify() OpOption { return func(op *Op) { op.createdNotify = true } }

// GetPrefixRangeEnd is the end of the range of keys with prefix.
func GetPrefixRangeEnd(prefix string) string { return prefixEnd(prefix) }

// prefixEnd is the first key after every key with prefix: prefix with
// its last byte below 0xff incremented and the bytes after it cut.
func prefixEnd(prefix string) string {
	end := []byte(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return string(end[:i+1])
		}
	}
	return "\x00" // every key
}

// The JSON of etcd's requests.

type rangeRequest struct {
	Key          []byte `json:"key"`
	RangeEnd     []byte `json:"range_end,omitempty"`
	Limit        int64  `json:"limit,omitempty,string"`
	Revision     int64  `json:"revision,omitempty,string"`
	SortOrder    string `json:"sort_order,omitempty"`
	SortTarget   string `json:"sort_target,omitempty"`
	Serializable bool   `json:"serializable,omitempty"`
	KeysOnly     bool   `json:"keys_only,omitempty"`
}

type putRequest struct {
	Key   []byte `json:"key"`
	Value []byte `json:"value"`
	Lease int64  `json:"lease,omitempty,string"`
}

type deleteRequest struct {
	Key      []byte `json:"key"`
	RangeEnd []byte `json:"range_end,omitempty"`
}

type txnJSON struct {
	Compare []Cmp       `json:"compare"`
	Success []requestOp `json:"success"`
	Failure []requestOp `json:"failure"`
}

type requestOp struct {
	Range  *rangeRequest  `json:"request_range,omitempty"`
	Put    *putRequest    `json:"request_put,omitempty"`
	Delete *deleteRequest `json:"request_delete_range,omitempty"`
	Txn    *txnJSON       `json:"request_txn,omitempty"`
}

func (op Op) rangeRequest() *rangeRequest {
	r := &rangeRequest{Key: []byte(op.key), Limit: op.limit, Revision: op.rev,
		Serializable: op.serializable, KeysOnly: op.keysOnly}
	if op.end != "" {
		r.RangeEnd = []byte(op.end)
	}
	if op.sortOrder != "" {
		r.SortOrder, r.SortTarget = op.sortOrder, op.sortTarget
	}
	return r
}

func (op Op) putRequest() *putRequest {
	return &putRequest{Key: []byte(op.key), Value: []byte(op.val), Lease: int64(op.lease)}
}

func (op Op) deleteRequest() *deleteRequest {
	r := &deleteRequest{Key: []byte(op.key)}
	if op.end != "" {
		r.RangeEnd = []byte(op.end)
	}
	return r
}

func (op Op) requestOp() requestOp {
	switch op.t {
	case tPut:
		return requestOp{Put: op.putRequest()}
	case tDelete:
		return requestOp{Delete: op.deleteRequest()}
	case tTxn:
		return requestOp{Txn: txnRequest(op.cmps, op.thenOps, op.elseOps)}
	}
	return requestOp{Range: op.rangeRequest()}
}

func txnRequest(cmps []Cmp, thenOps, elseOps []Op) *txnJSON {
	t := &txnJSON{Compare: cmps}
	if t.Compare == nil {
		t.Compare = []Cmp{}
	}
	for _, op := range thenOps {
		t.Success = append(t.Success, op.requestOp())
	}
	for _, op := range elseOps {
		t.Failure = append(t.Failure, op.requestOp())
	}
	return t
}
