package mp

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/mpspawn/mpspawn/internal/codec"
	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/launcher/contract"
)

// The environment that makes a process of the binary a Go rank or a Pool
// worker instead of the parent. Main reads it and removes it, with the
// control channel's variable, before the function runs, so that the
// function's own processes do not take the rank's role.
const (
	envRole    = "MPSPAWN_GO_ROLE" // roleRank or roleWorker
	roleRank   = "rank"
	roleWorker = "worker"
)

// ErrInsideRank is returned by Spawn and NewPool called in a process that
// the Go API started as a rank whose Main did not run first: without that
// check, every rank would start ranks again, without end.
var ErrInsideRank = errors.New("mp: Spawn or NewPool called inside a rank: call mp.Main() first thing in main")

// insideRank reports whether this process is a rank that has not run Main.
func insideRank() bool {
	_, ok := os.LookupEnv(envRole)
	return ok
}

// callMsg is the FrameArgs payload of a spawned rank (Args: one encoded
// argument). A Pool task's FrameRequest payload is instead the function's
// name as a field (codec.AppendField) followed by the chunk of items as
// codec.AppendSlice encodes them; its FrameReply carries a batch reply (see
// encodeBatchReply), or its FrameError a remoteError when the chunk could
// not be run at all.
type callMsg struct {
	Func string
	Args []byte
}

// Main makes the binary a rank when Spawn or a Pool started it as one: it
// runs the registered function it is asked to, reports the result or the
// error (with the panic value and stack) to the parent over the control
// channel, and exits — 0 on success, 1 on failure. In the parent, and in
// any process not started by Spawn or a Pool, Main returns at once. Call it
// first thing in main, after every Register (registering at package level
// does that).
func Main() {
	role, ok := os.LookupEnv(envRole)
	if !ok {
		return
	}
	os.Unsetenv(envRole)
	os.Exit(runChild(role))
}

// runChild serves one rank or one Pool worker and returns its exit code.
func runChild(role string) int {
	conn, err := ipc.ConnFromEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "mpspawn: %v\n", err)
		return 2
	}
	defer conn.Close()
	env, err := contract.ReadRankEnv(os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mpspawn: %v\n", err)
		return 2
	}
	// SIGTERM (the launcher stopping the job) cancels the function's
	// context once the function watches it; SIGKILL follows after the
	// grace period if it does not return.
	ctx := &stopContext{}
	defer ctx.release()
	r := rankOf(env)
	if role == roleWorker {
		return serveWorker(ctx, conn, r)
	}
	return serveRank(ctx, conn, r)
}

// serveRank runs the one call of a spawned rank.
func serveRank(ctx context.Context, conn *ipc.Conn, r Rank) int {
	f, err := conn.ReadFrame()
	if err != nil {
		fmt.Fprintf(os.Stderr, "mpspawn: rank %d: read args: %v\n", r.Index, err)
		return 2
	}
	var msg callMsg
	if f.Type != ipc.FrameArgs || codec.Decode(f.Payload, &msg) != nil {
		fmt.Fprintf(os.Stderr, "mpspawn: rank %d: unexpected %v frame from the launcher\n", r.Index, f.Type)
		return 2
	}
	client := ipc.NewClient(conn, r.Index) // reads the channel from now on
	var out []byte
	e, rerr := registered(msg.Func)
	if rerr == nil {
		out, rerr = e.one(ipc.WithClient(ctx, client), r, msg.Args)
	}
	// Producer-owned handles this rank published must not be freed under
	// their holders: wait for them, bounded, and say who still holds one.
	for _, w := range client.Close(ctx, ipc.DefaultCloseWait) {
		fmt.Fprintf(os.Stderr, "mpspawn: warning: %s\n", w)
	}
	if rerr != nil {
		b, _ := codec.Encode(rerr)
		if err := conn.WriteFrame(ipc.Frame{Type: ipc.FrameError, Payload: b}); err != nil {
			fmt.Fprintf(os.Stderr, "mpspawn: rank %d: %s\n", r.Index, rerr.Message)
		}
		return 1
	}
	if err := conn.WriteFrame(ipc.Frame{Type: ipc.FrameResult, Payload: out}); err != nil {
		fmt.Fprintf(os.Stderr, "mpspawn: rank %d: send result: %v\n", r.Index, err)
		return 1
	}
	return 0
}

// serveWorker runs Pool tasks until the Pool closes the channel.
func serveWorker(ctx context.Context, conn *ipc.Conn, r Rank) int {
	// The pool sends up to workerDepth tasks ahead, then a close.
	tasks := make(chan ipc.Frame, workerDepth+1)
	client := ipc.NewClient(conn, r.Index, ipc.WithInbox(tasks)) // reads the channel from now on
	ctx = ipc.WithClient(ctx, client)
	for {
		f, ok := <-tasks
		if !ok || f.Type == ipc.FrameClose { // the pool is done with this worker
			// Producer-owned handles its tasks published must not be freed
			// under their holders: wait for them, bounded, as a rank does.
			for _, w := range client.Close(ctx, ipc.DefaultCloseWait) {
				fmt.Fprintf(os.Stderr, "mpspawn: warning: %s\n", w)
			}
			return 0
		}
		name, items, ok := codec.CutField(f.Payload)
		if !ok {
			fmt.Fprintf(os.Stderr, "mpspawn: pool worker %d: bad task frame\n", r.Index)
			return 2
		}
		reply := ipc.Frame{Type: ipc.FrameReply, ID: f.ID}
		var out []byte
		e, rerr := registered(string(name))
		if rerr == nil {
			out, rerr = e.batch(ctx, r, items)
		}
		if rerr != nil {
			reply.Type = ipc.FrameError
			out, _ = codec.Encode(rerr) // strings only: cannot fail
		}
		reply.Payload = out
		// Puts the task made go out before its reply: the pool stops
		// reading this worker's requests once it has the reply.
		if err := client.Flush(); err != nil {
			fmt.Fprintf(os.Stderr, "mpspawn: pool worker %d: %v\n", r.Index, err)
			return 2
		}
		if err := conn.WriteFrame(reply); err != nil {
			fmt.Fprintf(os.Stderr, "mpspawn: pool worker %d: send reply: %v\n", r.Index, err)
			return 2
		}
	}
}

// registered returns the function registered as name, or the error a
// rank reports when this binary has none.
func registered(name string) (entry, *remoteError) {
	e, ok := lookup(name)
	if !ok {
		return entry{}, &remoteError{Message: fmt.Sprintf("mp: function %q is not registered in this binary (register it at package level or before mp.Main)", name)}
	}
	return e, nil
}
