package mp

import (
	"context"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/mpspawn/mpspawn/internal/codec"
)

// DefaultChunksize is the chunk size Map uses when given chunksize < 1,
// chosen as Python's Pool.map chooses it: the items split into about four
// chunks per worker, so that the load balances and per-task overhead stays
// small.
func DefaultChunksize(items, workers int) int {
	c, extra := items/(4*workers), items%(4*workers)
	if extra > 0 {
		c++
	}
	return max(c, 1)
}

// chunkDone receives a finished chunk: items start .. start+len(vals)-1
// have the values vals, except those with an error in errs (by offset in
// the chunk). A chunk that failed as a whole has err set and vals nil.
type chunkDone[R any] func(start int, vals []R, errs map[int]error, err error)

// submitItems submits items to p in chunks and calls done once per chunk
// (from any goroutine) as results come in. It returns the number of chunks.
func submitItems[A, R any](ctx context.Context, p *Pool, fn Func[A, R], items []A, chunksize int, done chunkDone[R]) (int, error) {
	if _, ok := lookup(fn.name); !ok {
		return 0, fmt.Errorf("launcher: pool: function %q is not registered", fn.name)
	}
	if chunksize < 1 {
		chunksize = DefaultChunksize(len(items), p.n)
	}
	type chunk struct {
		start int
		enc   []byte
	}
	var chunks []chunk
	for start := 0; start < len(items); start += chunksize {
		end := min(start+chunksize, len(items))
		enc, err := codec.AppendSlice(codec.AppendField(getBuf(), []byte(fn.name)), items[start:end])
		if err != nil {
			for _, c := range chunks {
				putBuf(c.enc)
			}
			return 0, fmt.Errorf("launcher: pool: %s: encode items %d-%d: %w", fn.name, start, end-1, err)
		}
		chunks = append(chunks, chunk{start, enc})
	}
	for i, c := range chunks {
		n := chunksize
		if i == len(chunks)-1 {
			n = len(items) - c.start
		}
		p.submit(&poolTask{ctx: ctx, payload: c.enc,
			done: func(reply []byte, worker, pid int, err error) {
				putBuf(c.enc) // sent, or never to be
				vals, errs, err := decodeChunk[R](fn.name, n, reply, worker, pid, err)
				done(c.start, vals, errs, err)
			}})
	}
	return len(chunks), nil
}

// bufs recycles the request payloads of Pool chunks, so that a Map over
// plain data makes little garbage besides its results.
var bufs sync.Pool

func getBuf() []byte {
	if b, ok := bufs.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return nil
}

func putBuf(b []byte) {
	if cap(b) > 0 && cap(b) <= 64<<20 {
		bufs.Put(&b)
	}
}

// decodeChunk reads a worker's reply to a chunk of n items.
func decodeChunk[R any](name string, n int, reply []byte, worker, pid int, err error) ([]R, map[int]error, error) {
	if err != nil {
		return nil, nil, err
	}
	failed, values, err := decodeBatchReply[R](reply)
	if err != nil || len(values) != n {
		return nil, nil, fmt.Errorf("launcher: pool: %s: bad reply (%d results for %d items): %v", name, len(values), n, err)
	}
	var errs map[int]error
	for k, re := range failed {
		if errs == nil {
			errs = map[int]error{}
		}
		errs[k] = &RankError{Rank: worker, Pid: pid, Message: re.Message, Panicked: re.Panicked, PanicValue: re.Panic, Stack: re.Stack}
	}
	return values, errs, nil
}

// ItemError is the failure of one item of a Map, Starmap or MapUnordered.
// Err is a *RankError for an error or panic in the function (its Rank is
// the worker that ran the item), one wrapping ErrWorkerDied when the
// worker died running it, or why it never ran (ErrPoolClosed, a context's
// cause).
type ItemError struct {
	Index int // the item's position in the input
	Err   error
}

func (e *ItemError) Error() string { return "mp: " + e.detail() }

// detail is Error without the package's prefix, for a MapError to quote:
// "item 12 on worker 0 (pid 4242): unlucky 13" for a failure in the
// function, whose RankError names the worker.
func (e *ItemError) detail() string {
	if re, ok := e.Err.(*RankError); ok {
		return fmt.Sprintf("item %d on worker %d (pid %d): %s", e.Index, re.Rank, re.Pid, re.Message)
	}
	return fmt.Sprintf("item %d: %v", e.Index, e.Err)
}

// Unwrap returns Err.
func (e *ItemError) Unwrap() error { return e.Err }

// MapError is the error of a Map or Starmap whose items did not all
// succeed: every failed item, in input order. The results of those items
// are zero values; the others' are valid. errors.As and errors.Is look
// into each item's error.
type MapError struct {
	Items []*ItemError
}

func (e *MapError) Error() string {
	const shown = 8
	idx := make([]string, 0, shown)
	for _, it := range e.Items[:min(len(e.Items), shown)] {
		idx = append(idx, strconv.Itoa(it.Index))
	}
	more := ""
	if len(e.Items) > shown {
		more = ", ..."
	}
	return fmt.Sprintf("mp: %d items failed (%s%s); first: %s", len(e.Items), strings.Join(idx, ", "), more, e.Items[0].detail())
}

// Unwrap returns the items' errors.
func (e *MapError) Unwrap() []error {
	errs := make([]error, len(e.Items))
	for i, it := range e.Items {
		errs[i] = it
	}
	return errs
}

// MapAsync is Map returning at once; the Future holds the ordered results
// and, when items failed, a *MapError.
func MapAsync[A, R any](ctx context.Context, p *Pool, fn Func[A, R], items []A, chunksize int) *Future[[]R] {
	f := newFuture[[]R]()
	out := make([]R, len(items))
	var mu sync.Mutex
	var failed []*ItemError
	fail := func(start, n int, err error) {
		mu.Lock()
		for k := range n {
			failed = append(failed, &ItemError{Index: start + k, Err: err})
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	if chunksize < 1 {
		chunksize = DefaultChunksize(len(items), p.n)
	}
	wg.Add((len(items) + chunksize - 1) / chunksize) // before any chunk can finish
	_, err := submitItems(ctx, p, fn, items, chunksize, func(start int, vals []R, chunkErrs map[int]error, err error) {
		defer wg.Done()
		if err != nil {
			fail(start, chunkLen(items, start, chunksize, p), err)
			return
		}
		copy(out[start:], vals)
		for k, e := range chunkErrs {
			fail(start+k, 1, e)
		}
	})
	if err != nil { // nothing was submitted
		f.set(nil, err)
		return f
	}
	go func() {
		wg.Wait()
		if len(failed) == 0 {
			f.set(out, nil)
			return
		}
		slices.SortFunc(failed, func(a, b *ItemError) int { return a.Index - b.Index })
		f.set(out, &MapError{Items: failed})
	}()
	return f
}

// chunkLen is the length of the chunk starting at start.
func chunkLen[A any](items []A, start, chunksize int, p *Pool) int {
	if chunksize < 1 {
		chunksize = DefaultChunksize(len(items), p.n)
	}
	return min(chunksize, len(items)-start)
}

// Map applies fn to every item in the pool's workers, chunksize items per
// task (DefaultChunksize when < 1), and returns the results in item order.
// When items fail, it returns the results of the others and a *MapError
// naming every failed item (its Err a *RankError for an error or panic in
// fn).
func Map[A, R any](ctx context.Context, p *Pool, fn Func[A, R], items []A, chunksize int) ([]R, error) {
	return MapAsync(ctx, p, fn, items, chunksize).Get(ctx)
}

// ApplyAsync runs fn on one argument in a worker, returning at once.
func ApplyAsync[A, R any](ctx context.Context, p *Pool, fn Func[A, R], arg A) *Future[R] {
	f := newFuture[R]()
	_, err := submitItems(ctx, p, fn, []A{arg}, 1, func(_ int, vals []R, errs map[int]error, err error) {
		var v R
		switch {
		case err != nil:
		case errs[0] != nil:
			err = errs[0]
		default:
			v = vals[0]
		}
		f.set(v, err)
	})
	if err != nil {
		var zero R
		f.set(zero, err)
	}
	return f
}

// Apply runs fn on one argument in a worker and waits for the result.
func Apply[A, R any](ctx context.Context, p *Pool, fn Func[A, R], arg A) (R, error) {
	return ApplyAsync(ctx, p, fn, arg).Get(ctx)
}

// Starmap applies a function registered with Register2 to each pair of
// arguments, as Python's Pool.starmap applies a function to argument
// tuples.
func Starmap[A, B, R any](ctx context.Context, p *Pool, fn Func[Pair[A, B], R], args []Pair[A, B], chunksize int) ([]R, error) {
	return Map(ctx, p, fn, args, chunksize)
}

// MapUnordered applies fn to every item and yields each item's outcome as
// its chunk comes in, in completion order, like Python's imap_unordered.
// Stopping the iteration early leaves the remaining items to finish
// unobserved.
func MapUnordered[A, R any](ctx context.Context, p *Pool, fn Func[A, R], items []A, chunksize int) iter.Seq[Outcome[R]] {
	return func(yield func(Outcome[R]) bool) {
		ch := make(chan Outcome[R], len(items))
		_, err := submitItems(ctx, p, fn, items, chunksize, func(start int, vals []R, errs map[int]error, err error) {
			for k := range chunkLen(items, start, chunksize, p) {
				o := Outcome[R]{Index: start + k, Err: err}
				if err == nil {
					o.Value, o.Err = vals[k], errs[k]
				}
				if o.Err != nil {
					o.Err = &ItemError{Index: o.Index, Err: o.Err}
				}
				ch <- o
			}
		})
		if err != nil {
			yield(Outcome[R]{Index: -1, Err: err})
			return
		}
		for range items {
			select {
			case o := <-ch:
				if !yield(o) {
					return
				}
			case <-ctx.Done():
				yield(Outcome[R]{Index: -1, Err: context.Cause(ctx)})
				return
			}
		}
	}
}

// Future is the pending result of an async Pool call.
type Future[T any] struct {
	done chan struct{}
	val  T
	err  error
}

func newFuture[T any]() *Future[T] { return &Future[T]{done: make(chan struct{})} }

func (f *Future[T]) set(v T, err error) {
	f.val, f.err = v, err
	close(f.done)
}

// Get waits for the result, or for ctx to end.
func (f *Future[T]) Get(ctx context.Context) (T, error) {
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		var zero T
		return zero, context.Cause(ctx)
	}
}

// Ready reports whether the result is in.
func (f *Future[T]) Ready() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// Outcome is one item's result from MapUnordered.
type Outcome[R any] struct {
	Index int // the item's position in the input; -1 for a failure of the whole call
	Value R
	Err   error // an *ItemError for the item's failure
}
