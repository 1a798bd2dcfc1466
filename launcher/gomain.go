package launcher

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/mpspawn/mpspawn/ipc"
)

// The environment that makes a process of the binary a Go rank or a Pool
// worker instead of the parent.
const (
	envRole      = "MPSPAWN_GO_ROLE"    // roleRank or roleWorker
	envControlFD = "MPSPAWN_CONTROL_FD" // the inherited control socket
	roleRank     = "rank"
	roleWorker   = "worker"
	controlFD    = 3 // the control socket is the first of Spec.ExtraFiles
)

// callMsg is the FrameArgs payload of a spawned rank (Args: one encoded
// argument). A Pool task's FrameRequest payload is instead the function's
// name as a field (appendField) followed by the chunk of items as
// encodeSlice encodes them; its FrameReply carries a batch reply (see
// encodeBatchReply), or its FrameError a remoteError when the chunk could
// not be run at all.
type callMsg struct {
	Func string
	Args []byte
}

// itemResult is the outcome of one call.
type itemResult struct {
	Value []byte
	Err   *remoteError
}

// Main makes the binary a rank when the launcher started it as one: it runs
// the registered function it is asked to, reports the result or the error
// (with the panic value and stack) to the parent over the control channel,
// and exits — 0 on success, 1 on failure. In the parent, and in any process
// not started by Spawn or a Pool, Main returns at once. Call it at the top
// of main, after every Register.
func Main() {
	role := os.Getenv(envRole)
	if role == "" {
		return
	}
	os.Exit(runChild(role))
}

// runChild serves one rank or one Pool worker and returns its exit code.
func runChild(role string) int {
	fd, err := strconv.Atoi(os.Getenv(envControlFD))
	if err != nil {
		fmt.Fprintf(os.Stderr, "mpspawn: %s=%q: not a file descriptor\n", envControlFD, os.Getenv(envControlFD))
		return 2
	}
	conn, err := ipc.FileConn(os.NewFile(uintptr(fd), "mpspawn-control"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "mpspawn: control channel: %v\n", err)
		return 2
	}
	defer conn.Close()
	// SIGTERM (the launcher stopping the job) cancels the function's
	// context; SIGKILL follows after the grace period if it does not
	// return.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	r := rankFromEnv()
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
	if f.Type != ipc.FrameArgs || ipc.Decode(f.Payload, &msg) != nil {
		fmt.Fprintf(os.Stderr, "mpspawn: rank %d: unexpected %v frame from the launcher\n", r.Index, f.Type)
		return 2
	}
	client := ipc.NewClient(conn, r.Index) // reads the channel from now on
	res := runItem(ipc.WithClient(ctx, client), msg.Func, r, msg.Args)
	// Producer-owned handles this rank published must not be freed under
	// their holders: wait for them, bounded, and say who still holds one.
	for _, w := range client.Close(ctx, ipc.DefaultCloseWait) {
		fmt.Fprintf(os.Stderr, "mpspawn: warning: %s\n", w)
	}
	if res.Err != nil {
		b, _ := ipc.Encode(res.Err)
		if err := conn.WriteFrame(ipc.Frame{Type: ipc.FrameError, Payload: b}); err != nil {
			fmt.Fprintf(os.Stderr, "mpspawn: rank %d: %s\n", r.Index, res.Err.Message)
		}
		return 1
	}
	if err := conn.WriteFrame(ipc.Frame{Type: ipc.FrameResult, Payload: res.Value}); err != nil {
		fmt.Fprintf(os.Stderr, "mpspawn: rank %d: send result: %v\n", r.Index, err)
		return 1
	}
	return 0
}

// serveWorker runs Pool tasks until the Pool closes the channel.
func serveWorker(ctx context.Context, conn *ipc.Conn, r Rank) int {
	client, tasks := ipc.NewWorkerClient(conn, r.Index) // reads the channel from now on
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
		name, items, ok := ipc.CutField(f.Payload)
		if !ok {
			fmt.Fprintf(os.Stderr, "mpspawn: pool worker %d: bad task frame\n", r.Index)
			return 2
		}
		reply := ipc.Frame{Type: ipc.FrameReply, ID: f.ID}
		out, rerr := runBatch(ctx, string(name), r, items)
		if rerr != nil {
			reply.Type = ipc.FrameError
			out, _ = ipc.Encode(rerr) // strings only: cannot fail
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

// runBatch runs the registered function name on a Pool chunk.
func runBatch(ctx context.Context, name string, r Rank, items []byte) ([]byte, *remoteError) {
	e, ok := lookup(name)
	if !ok {
		return nil, notRegistered(name)
	}
	out, err := e.batch(ctx, r, items)
	if err != nil {
		return nil, &remoteError{Message: err.Error()}
	}
	return out, nil
}

func notRegistered(name string) *remoteError {
	return &remoteError{Message: fmt.Sprintf("launcher: function %q is not registered in this binary (register it at package level or before launcher.Main)", name)}
}

// runItem runs the registered function name on one encoded argument.
func runItem(ctx context.Context, name string, r Rank, arg []byte) itemResult {
	e, ok := lookup(name)
	if !ok {
		return itemResult{Err: notRegistered(name)}
	}
	v, rerr := call(ctx, e.one, r, arg)
	return itemResult{Value: v, Err: rerr}
}
