package mp

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/mpspawn/mpspawn/internal/codec"
	"github.com/mpspawn/mpspawn/launcher/contract"
	"github.com/mpspawn/mpspawn/place"
)

// Rank is what a registered function is told about the process it runs in,
// read from the rank contract (contract.ReadRankEnv).
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
	CPUs place.CPUSet
}

// rankOf is the Rank a launcher's contract describes.
func rankOf(e contract.RankEnv) Rank {
	return Rank{Index: e.Rank, WorldSize: e.WorldSize, LocalRank: e.LocalRank, GPUs: e.GPUs, CPUs: e.CPUs}
}

// Func is a registered function taking A and returning R; Register returns
// it, and Spawn and the Pool run it.
type Func[A, R any] struct {
	name string
}

// Name is the name the function was registered under.
func (f Func[A, R]) Name() string { return f.name }

// invoker runs a registered function on gob-encoded arguments. A failure
// is a *remoteError: the function's own (returned or panicked), or one of
// decoding or encoding.
type invoker func(ctx context.Context, r Rank, args []byte) ([]byte, *remoteError)

// entry is a registered function: one call for a spawned rank, and a batch
// of calls (a Pool chunk, encoded as one []A) for a worker.
type entry struct {
	one   invoker
	batch invoker // []A in, batchReply[R] out; an error only when decoding or encoding fails
}

// frame is where a registered function is defined, the frame a returned
// error is reported at: "returned by main.train (/src/main.go:42)".
type frame string

func frameOf(fn any) frame {
	f := runtime.FuncForPC(reflect.ValueOf(fn).Pointer())
	if f == nil {
		return ""
	}
	file, line := f.FileLine(f.Entry())
	return frame(fmt.Sprintf("%s\n\t%s:%d", f.Name(), file, line))
}

// funcName is fn's name as the runtime knows it: main.train, or
// main.init.func1 for a function literal.
func funcName(fn any) string {
	if f := runtime.FuncForPC(reflect.ValueOf(fn).Pointer()); f != nil {
		return f.Name()
	}
	return "?"
}

// A Pool chunk's reply is a field (see appendField) holding the gob-encoded
// map of failed items (offset → remoteError; empty when none failed), then
// the results as appendSlice encodes a []R.
func encodeBatchReply[R any](errs map[int]*remoteError, values []R) ([]byte, error) {
	var errGob []byte
	if len(errs) > 0 {
		var err error
		if errGob, err = codec.Encode(errs); err != nil {
			return nil, err
		}
	}
	return codec.AppendSlice(codec.AppendField(nil, errGob), values)
}

func decodeBatchReply[R any](b []byte) (errs map[int]*remoteError, values []R, err error) {
	errGob, enc, ok := codec.CutField(b)
	if !ok {
		return nil, nil, errors.New("mp: bad batch reply")
	}
	if len(errGob) > 0 {
		if err := codec.Decode(errGob, &errs); err != nil {
			return nil, nil, err
		}
	}
	values, err = codec.DecodeSlice[R](enc)
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
	return register(name, fn, frameOf(fn))
}

// register registers fn, defined at where.
func register[A, R any](name string, fn func(ctx context.Context, r Rank, args A) (R, error), where frame) Func[A, R] {
	if name == "" || fn == nil {
		panic("mp: Register: empty name or nil function")
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.funcs[name]; dup {
		panic(fmt.Sprintf("mp: Register: %q is already registered", name))
	}
	label := fmt.Sprintf("%q (%s)", name, funcName(fn)) // names fn in a panic's stack
	one := func(ctx context.Context, r Rank, in []byte) (out []byte, rerr *remoteError) {
		var args A
		if err := codec.Decode(in, &args); err != nil {
			return nil, &remoteError{Message: fmt.Sprintf("mp: %s: decode args: %v", name, err)}
		}
		defer recoverInto(&rerr, label)
		res, err := fn(ctx, r, args)
		if err != nil {
			return nil, errorOf(err, where)
		}
		if out, err = codec.Encode(res); err != nil {
			return nil, &remoteError{Message: fmt.Sprintf("mp: %s: encode result: %v", name, err)}
		}
		return out, nil
	}
	batch := func(ctx context.Context, r Rank, in []byte) ([]byte, *remoteError) {
		items, err := codec.DecodeSlice[A](in)
		if err != nil {
			return nil, &remoteError{Message: fmt.Sprintf("mp: %s: decode items: %v", name, err)}
		}
		values := make([]R, len(items))
		errs := map[int]*remoteError{}
		for next := 0; next < len(items); {
			next = callFrom(ctx, fn, where, label, r, items, values, next, errs)
		}
		out, err := encodeBatchReply(errs, values)
		if err != nil {
			return nil, &remoteError{Message: fmt.Sprintf("mp: %s: encode results: %v", name, err)}
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
	return register(name, func(ctx context.Context, r Rank, p Pair[A, B]) (R, error) {
		return fn(ctx, r, p.First, p.Second)
	}, frameOf(fn))
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

// callFrom runs fn on items[start:], storing results in values and
// failures in errs, and returns where to go on: len(items), or the item
// after one that panicked. It recovers once per panic rather than once per
// item, which would cost more than a tiny function does.
func callFrom[A, R any](ctx context.Context, fn func(context.Context, Rank, A) (R, error), where frame, label string, r Rank, items []A, values []R, start int, errs map[int]*remoteError) (next int) {
	i := start
	defer func() {
		if v := recover(); v != nil {
			errs[i], next = panicError(v, label), i+1
		}
	}()
	for ; i < len(items); i++ {
		v, err := fn(ctx, r, items[i])
		if err != nil {
			errs[i] = errorOf(err, where)
			continue
		}
		values[i] = v
	}
	return len(items)
}

// recoverInto, deferred, turns a panic in the function label names into a
// remoteError.
func recoverInto(rerr **remoteError, label string) {
	if v := recover(); v != nil {
		*rerr = panicError(v, label)
	}
}

// panicError is a recovered panic in the function label names, as it
// travels: its value and the stack of the panicking goroutine. It is
// called by the deferred function that recovered.
func panicError(v any, label string) *remoteError {
	return &remoteError{Message: fmt.Sprintf("panic: %v", v), Panicked: true, Panic: fmt.Sprint(v), Stack: userStack(label)}
}

// mpCaller is how the package's functions that call a registered function
// begin, in a stack.
const mpCaller = "github.com/mpspawn/mpspawn/launcher/mp."

// userStack is the stack of a panic being recovered, from the frame that
// panicked down to the registered function label names: what the user
// wrote, without the runtime's panic machinery above it or the package's
// frames that called the function below it. Called elsewhere than in a
// deferred recovery, it is the whole stack (runtime/debug.Stack).
func userStack(label string) string {
	pcs := make([]uintptr, 128)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(1, pcs)])
	var lines []string
	panicking, user := false, false
	for f, more := frames.Next(); ; f, more = frames.Next() {
		switch {
		case f.Function == "runtime.gopanic":
			panicking, lines = true, nil
		case !panicking:
		case !user && strings.HasPrefix(f.Function, "runtime."):
			// runtime.panicdivide, runtime.sigpanic: how it panicked
		case user && (strings.HasPrefix(f.Function, mpCaller+"callFrom") || strings.HasPrefix(f.Function, mpCaller+"register")):
			more = false // the package called the function here
		default:
			user = true
			lines = append(lines, fmt.Sprintf("%s(...)\n\t%s:%d", f.Function, f.File, f.Line))
		}
		if !more {
			break
		}
	}
	if len(lines) == 0 {
		return string(debug.Stack())
	}
	return fmt.Sprintf("panic in %s:\n%s\n", label, strings.Join(lines, "\n"))
}

// errorOf is a returned error as it travels. An error has no stack of its
// own unless it formats one (as pkg/errors' %+v does); otherwise the stack
// names the function that returned it, where it is defined: the
// launcher's own frames, which called it, would say nothing.
func errorOf(err error, where frame) *remoteError {
	stack := fmt.Sprintf("%+v", err)
	if stack == err.Error() {
		stack = ""
		if where != "" {
			stack = "returned by " + string(where)
		}
	}
	return &remoteError{Message: err.Error(), Stack: stack}
}
