package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"github.com/mpspawn/mpspawn/ipc"
)

// Go cannot send a closure to another process: a rank is a fresh process of
// the same binary, which finds the function to run by name. Functions are
// therefore registered, at package init or at the top of main, before Main:
//
//	var train = launcher.Register("train", func(ctx context.Context, r launcher.Rank, cfg Config) (Stats, error) {
//		...
//	})
//
//	func main() {
//		launcher.Main() // a rank runs its function here and exits
//		results, err := launcher.Spawn(ctx, train, 8, cfg, nil) ...
//	}
//
// Arguments and results travel encoded with encoding/gob, so their types need
// exported fields (or a GobEncoder); interface values must be gob.Register'ed.

// Rank is what a registered function is told about the process it runs in.
type Rank struct {
	// Index is the rank, 0 .. WorldSize-1 (in a Pool: the worker's index).
	Index int
	// WorldSize is the number of ranks (in a Pool: of workers).
	WorldSize int
	// LocalRank is the rank's index on this node.
	LocalRank int
	// GPUs holds the UUIDs of the rank's GPUs when a placement gave it some
	// (MPSPAWN_GPUS); CUDA_VISIBLE_DEVICES is set to match.
	GPUs []string
	// CPUs is the CPUs the rank is bound to (MPSPAWN_CPUS), or nil.
	CPUs []int
}

// Func is a registered function taking A and returning R; Register returns
// it, and Spawn and the Pool run it.
type Func[A, R any] struct {
	name string
}

// Name is the name the function was registered under.
func (f Func[A, R]) Name() string { return f.name }

// invoker runs a registered function on gob-encoded arguments.
type invoker func(ctx context.Context, r Rank, args []byte) ([]byte, error)

// entry is a registered function: one call for a spawned rank, and a batch
// of calls (a Pool chunk, encoded as one []A) for a worker.
type entry struct {
	one   invoker
	batch invoker // []A in, batchReply[R] out; an error only when decoding or encoding fails
}

// A Pool chunk's reply is a field (see appendField) holding the gob-encoded
// map of failed items (offset → remoteError; empty when none failed), then
// the results as appendSlice encodes a []R.
func encodeBatchReply[R any](errs map[int]*remoteError, values []R) ([]byte, error) {
	var errGob []byte
	if len(errs) > 0 {
		var err error
		if errGob, err = ipc.Encode(errs); err != nil {
			return nil, err
		}
	}
	return ipc.AppendSlice(ipc.AppendField(nil, errGob), values)
}

func decodeBatchReply[R any](b []byte) (errs map[int]*remoteError, values []R, err error) {
	errGob, enc, ok := ipc.CutField(b)
	if !ok {
		return nil, nil, errors.New("launcher: bad batch reply")
	}
	if len(errGob) > 0 {
		if err := ipc.Decode(errGob, &errs); err != nil {
			return nil, nil, err
		}
	}
	values, err = ipc.DecodeSlice[R](enc)
	return errs, values, err
}

// registry holds the registered functions. It is filled by Register, at init
// time or before Main, and only read afterwards.
var registry = struct {
	sync.RWMutex
	funcs map[string]entry
}{funcs: map[string]entry{}}

// Register registers fn under name and returns the handle Spawn and the Pool
// take. Register the same functions in the same way in every process of the
// binary (at package level, or at the top of main before Main): ranks find
// fn by name. A name registered twice panics, as a programming error.
func Register[A, R any](name string, fn func(ctx context.Context, r Rank, args A) (R, error)) Func[A, R] {
	if name == "" || fn == nil {
		panic("launcher: Register: empty name or nil function")
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.funcs[name]; dup {
		panic(fmt.Sprintf("launcher: Register: %q is already registered", name))
	}
	one := func(ctx context.Context, r Rank, in []byte) ([]byte, error) {
		var args A
		if err := ipc.Decode(in, &args); err != nil {
			return nil, fmt.Errorf("launcher: %s: decode args: %w", name, err)
		}
		res, err := fn(ctx, r, args)
		if err != nil {
			return nil, err
		}
		out, err := ipc.Encode(res)
		if err != nil {
			return nil, fmt.Errorf("launcher: %s: encode result: %w", name, err)
		}
		return out, nil
	}
	batch := func(ctx context.Context, r Rank, in []byte) ([]byte, error) {
		items, err := ipc.DecodeSlice[A](in)
		if err != nil {
			return nil, fmt.Errorf("launcher: %s: decode items: %w", name, err)
		}
		values := make([]R, len(items))
		errs := map[int]*remoteError{}
		for next := 0; next < len(items); {
			next = callFrom(ctx, fn, r, items, values, next, errs)
		}
		out, err := encodeBatchReply(errs, values)
		if err != nil {
			return nil, fmt.Errorf("launcher: %s: encode results: %w", name, err)
		}
		return out, nil
	}
	registry.funcs[name] = entry{one: one, batch: batch}
	return Func[A, R]{name: name}
}

// Pair holds two arguments, for functions registered with Register2.
type Pair[A, B any] struct {
	First  A
	Second B
}

// Register2 registers a two-argument function; it takes a Pair, so that
// Starmap can apply it to a list of argument pairs, as Python's
// Pool.starmap applies a function to argument tuples.
func Register2[A, B, R any](name string, fn func(ctx context.Context, r Rank, a A, b B) (R, error)) Func[Pair[A, B], R] {
	return Register(name, func(ctx context.Context, r Rank, p Pair[A, B]) (R, error) {
		return fn(ctx, r, p.First, p.Second)
	})
}

func lookup(name string) (entry, bool) {
	registry.RLock()
	defer registry.RUnlock()
	e, ok := registry.funcs[name]
	return e, ok
}

// remoteError is a failure inside a rank or Pool task, as it travels back.
type remoteError struct {
	Message  string
	Panicked bool
	Panic    string // the panic value, formatted with %v
	Stack    string
}

// call runs fn, turning a panic or a returned error into a remoteError.
func call(ctx context.Context, fn invoker, r Rank, args []byte) (out []byte, rerr *remoteError) {
	defer recoverInto(&rerr)
	out, err := fn(ctx, r, args)
	if err != nil {
		return nil, errorOf(err)
	}
	return out, nil
}

// callFrom runs fn on items[start:], storing results in values and
// failures in errs, and returns where to go on: len(items), or the item
// after one that panicked. It recovers once per panic rather than once per
// item, which would cost more than a tiny function does.
func callFrom[A, R any](ctx context.Context, fn func(context.Context, Rank, A) (R, error), r Rank, items []A, values []R, start int, errs map[int]*remoteError) (next int) {
	i := start
	defer func() {
		if v := recover(); v != nil {
			errs[i], next = panicError(v), i+1
		}
	}()
	for ; i < len(items); i++ {
		v, err := fn(ctx, r, items[i])
		if err != nil {
			errs[i] = errorOf(err)
			continue
		}
		values[i] = v
	}
	return len(items)
}

// recoverInto, deferred, turns a panic into a remoteError.
func recoverInto(rerr **remoteError) {
	if v := recover(); v != nil {
		*rerr = panicError(v)
	}
}

// panicError is a recovered panic as it travels: its value and the stack of
// the panicking goroutine, which names the line that panicked.
func panicError(v any) *remoteError {
	return &remoteError{Message: fmt.Sprintf("panic: %v", v), Panicked: true, Panic: fmt.Sprint(v), Stack: string(debug.Stack())}
}

// errorOf is a returned error as it travels. An error has no stack of its
// own unless it formats one (as pkg/errors' %+v does); the stack at return
// shows where the function was called.
func errorOf(err error) *remoteError {
	stack := fmt.Sprintf("%+v", err)
	if stack == err.Error() {
		stack = string(debug.Stack())
	}
	return &remoteError{Message: err.Error(), Stack: stack}
}

// rankFromEnv reads the Rank a launcher gave this process.
func rankFromEnv() Rank {
	atoi := func(k string) int {
		n, _ := strconv.Atoi(os.Getenv(k))
		return n
	}
	r := Rank{Index: atoi("RANK"), WorldSize: atoi("WORLD_SIZE"), LocalRank: atoi("LOCAL_RANK")}
	if g := os.Getenv("MPSPAWN_GPUS"); g != "" {
		r.GPUs = strings.Split(g, ",")
	}
	for _, part := range strings.Split(os.Getenv("MPSPAWN_CPUS"), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		switch {
		case err1 != nil:
		case !isRange:
			r.CPUs = append(r.CPUs, a)
		case err2 == nil:
			for c := a; c <= b; c++ {
				r.CPUs = append(r.CPUs, c)
			}
		}
	}
	return r
}
