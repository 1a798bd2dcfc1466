package launcher

import (
	"context"
	"fmt"
	"iter"
	"sync"
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

// submitItems encodes items, submits them to p in chunks, and calls
// deliver once per item (from any goroutine) as results come in.
func submitItems[A, R any](ctx context.Context, p *Pool, fn Func[A, R], items []A, chunksize int, deliver func(i int, v R, err error)) error {
	if _, ok := lookup(fn.name); !ok {
		return fmt.Errorf("launcher: pool: function %q is not registered", fn.name)
	}
	if chunksize < 1 {
		chunksize = DefaultChunksize(len(items), p.n)
	}
	enc := make([][]byte, len(items))
	for i, it := range items {
		b, err := encode(it)
		if err != nil {
			return fmt.Errorf("launcher: pool: %s: encode item %d: %w", fn.name, i, err)
		}
		enc[i] = b
	}
	for start := 0; start < len(items); start += chunksize {
		end := min(start+chunksize, len(items))
		p.submit(&poolTask{ctx: ctx, fn: fn.name, items: enc[start:end],
			done: func(res []itemResult, worker, pid int, err error) {
				for k := start; k < end; k++ {
					var v R
					switch {
					case err != nil:
						deliver(k, v, err)
					case res[k-start].Err != nil:
						re := res[k-start].Err
						deliver(k, v, &RankError{Rank: worker, Pid: pid, Message: re.Message, Panicked: re.Panicked, PanicValue: re.Panic, Stack: re.Stack})
					default:
						if derr := decode(res[k-start].Value, &v); derr != nil {
							deliver(k, v, fmt.Errorf("launcher: pool: %s: decode result %d: %w", fn.name, k, derr))
							continue
						}
						deliver(k, v, nil)
					}
				}
			}})
	}
	return nil
}

// MapAsync is Map returning at once; the Future holds the ordered results
// and the error of the first failed item.
func MapAsync[A, R any](ctx context.Context, p *Pool, fn Func[A, R], items []A, chunksize int) *Future[[]R] {
	f := newFuture[[]R]()
	out := make([]R, len(items))
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	wg.Add(len(items))
	if err := submitItems(ctx, p, fn, items, chunksize, func(i int, v R, err error) {
		out[i], errs[i] = v, err
		wg.Done()
	}); err != nil {
		f.set(nil, err)
		return f
	}
	go func() {
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				f.set(out, err)
				return
			}
		}
		f.set(out, nil)
	}()
	return f
}

// Map applies fn to every item in the pool's workers, chunksize items per
// task (DefaultChunksize when < 1), and returns the results in item order.
// When items fail, it returns the results of the others and the error of
// the first failed item (a *RankError for an error or panic in fn).
func Map[A, R any](ctx context.Context, p *Pool, fn Func[A, R], items []A, chunksize int) ([]R, error) {
	return MapAsync(ctx, p, fn, items, chunksize).Get(ctx)
}

// ApplyAsync runs fn on one argument in a worker, returning at once.
func ApplyAsync[A, R any](ctx context.Context, p *Pool, fn Func[A, R], arg A) *Future[R] {
	f := newFuture[R]()
	if err := submitItems(ctx, p, fn, []A{arg}, 1, func(_ int, v R, err error) { f.set(v, err) }); err != nil {
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
// soon as it is in, in completion order, like Python's imap_unordered.
// Stopping the iteration early leaves the remaining items to finish
// unobserved.
func MapUnordered[A, R any](ctx context.Context, p *Pool, fn Func[A, R], items []A, chunksize int) iter.Seq[Outcome[R]] {
	return func(yield func(Outcome[R]) bool) {
		ch := make(chan Outcome[R], len(items))
		if err := submitItems(ctx, p, fn, items, chunksize, func(i int, v R, err error) {
			ch <- Outcome[R]{Index: i, Value: v, Err: err}
		}); err != nil {
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
	Err   error
}
