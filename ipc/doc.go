// Package ipc lets the ranks of a job share memory and pass values through
// the launcher, without copies and without stdout. A Go rank's function
// gets its Client from its context and shares a buffer like this:
//
//	c := ipc.ClientFrom(ctx)                // the rank's side of the broker
//	buf, err := c.NewBuffer(len(data))      // a zeroed memfd, writable
//	copy(buf.Bytes(), data)
//	h, err := buf.Publish(ctx)              // sealed: nobody can write it now
//	q := ipc.NewQueue[ipc.Handle](0)        // made once, sent to the ranks in their args
//	err = q.Put(ctx, h)                     // the queue holds the buffer for the getter
//
// and another rank opens it, read-only, in place:
//
//	h, err := q.Get(ctx)
//	m, err := c.Open(ctx, h)                // m.Bytes() is the same memory
//	defer m.Close(ctx)                      // releases the handle
//
// Queue and Pipe carry any value gob can encode, and the Handles inside it
// (a buffer travels with its message); BufferPool recycles buffers of one
// size; PublishFD and PublishBlob share CUDA memory. Scripts use the same
// protocol from Python (module mpspawn.ipc, see package
// github.com/mpspawn/mpspawn/ipc/python).
//
// # How it works
//
// Each rank has a control channel to the launcher: a connected unix stream
// socket pair ([Pair]), the rank's end inherited as a file descriptor
// (ControlFDEnv) and opened with [ConnFromEnv]. [Conn.WriteFrame] and
// [Conn.ReadFrame] exchange [Frame]s, with file descriptors (SCM_RIGHTS)
// attached; a Conn is safe for one reader and any number of concurrent
// writers. The launcher runs one [Broker] for the job, and
// [Broker.Serve] is its one read loop on each rank's channel: it answers
// the ranks' requests (publish, open, release, put, get, ...), keeps the
// buffers' descriptors, and tracks who holds every handle, so that a
// buffer lives while anyone holds it and dies after. What one rank may make
// the broker keep is bounded by [Limits]; a request past one fails with
// [ErrLimit], and the rank carries on. No channel ends in silence: a rank
// that breaks the protocol is sent an error frame naming the violation
// ([ErrProtocol]) before its channel is closed.
//
// [Pair] and [FileConn] turn on SO_PASSCRED, so the kernel stamps every
// frame with the pid of the process that wrote it; the broker accepts
// frames from the rank's own process only ([PeerError]). [PacketConn] is
// this package's other transport, one JSON message per packet with
// descriptors attached, for the launcher's forkserver.
//
// The wire format (frames, requests, errors, limits, lifetimes) is
// described in docs/ipc-protocol.md; this package keeps its codec to
// itself. Conn and PacketConn are implemented on Linux only; elsewhere
// every operation fails with an error wrapping [errors.ErrUnsupported].
package ipc
