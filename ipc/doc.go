// Package ipc owns the control channel between the launcher and its ranks:
// the framing of messages on it and the passing of file descriptors
// (SCM_RIGHTS) with them. Later layers (shared buffers, Pipe, Queue, the
// broker) build on the frames defined here; stdout is never used.
//
// The launcher makes one connected unix stream socket pair per rank with
// [Pair]; the rank inherits its end as an extra file descriptor and turns it
// into a [Conn] with [FileConn]. Both sides then exchange [Frame]s with
// [Conn.WriteFrame] and [Conn.ReadFrame]. A Conn is safe for one reader and
// any number of concurrent writers: every frame is written whole, never
// interleaved with another.
//
// The Conn is implemented on Linux only; elsewhere every operation fails
// with an error wrapping [errors.ErrUnsupported]. The frame header codec
// ([frameHeader], [parseHeader], [appendHeader]) is pure and builds everywhere.
//
// # Wire format (version 1)
//
// The stream is a sequence of frames. A frame is a fixed 20-byte header
// followed by exactly Length payload bytes. All integers are big endian.
//
//	offset  size  field     value
//	     0     3  magic     "MPS" (0x4d 0x50 0x53)
//	     3     1  version   1 (Version); any other value is rejected
//	     4     1  type      FrameType; 0 is reserved and rejected
//	     5     1  flags     must be 0
//	     6     1  nfds      number of descriptors sent with the frame, 0..16 (MaxFiles)
//	     7     1  reserved  must be 0
//	     8     8  id        request/reply correlation id; 0 when unused
//	    16     4  length    payload length in bytes, at most the reader's limit
//	                        (DefaultMaxPayload, 64 MiB, unless changed with SetMaxPayload)
//	    20     …  payload   length bytes, opaque to this package
//
// Descriptors travel as one SCM_RIGHTS control message attached to the
// first byte of the header: the writer sends header, payload and
// descriptors with a single sendmsg(2), continuing with further writes only
// for the bytes a short write left over. The reader receives the header with
// recvmsg(2) (MSG_CMSG_CLOEXEC), collecting the descriptors of every
// SCM_RIGHTS message that arrives with header bytes, and the payload with
// plain reads. Descriptors that arrive with payload bytes are not part of
// the protocol; the kernel closes them.
//
// A frame is rejected with an error wrapping [ErrBadFrame] when its magic,
// version, type, flags or reserved byte are wrong, when nfds exceeds
// MaxFiles, when length exceeds the reader's limit, when the number of
// descriptors received differs from nfds, or when the kernel truncated the
// control data (MSG_CTRUNC). Every descriptor received with a rejected frame
// is closed. After such an error the stream is out of step and the Conn's
// read side stays broken; the caller closes the Conn.
//
// A clean end of stream before the first header byte reads as [io.EOF]
// (so does a peer that closed with frames of ours unread: the kernel's
// connection reset comes after every byte it wrote); an end of stream
// inside a frame as [io.ErrUnexpectedEOF]. With [Conn.SetFrameTimeout], a
// frame whose first bytes came but whose rest did not within the timeout is
// rejected too.
//
// # The broker
//
// [Broker.Serve] is the launcher's one read loop on a rank's channel. No
// channel ends in silence: a rank that breaks the protocol is sent an
// error frame naming the violation ([ErrProtocol]) before its channel is
// closed, and its [Client] fails the pending call and every later one with
// it. What one rank may make the broker keep is bounded by [Limits]; a
// request past one fails with [ErrLimit], and the rank carries on. The
// request protocol is described in docs/ipc-protocol.md.
//
// # Peer credentials
//
// [Pair] and [FileConn] turn on SO_PASSCRED, so the kernel stamps every
// frame with the pid, uid and gid of the process that wrote it
// (SCM_CREDENTIALS). This matters because SO_PEERCRED on a socket pair names
// the process that called socketpair(2) — the launcher — on both ends, not
// the rank that inherited one of them. [Conn.PeerCred] reports the writer of
// the last frame read and falls back to SO_PEERCRED before the first one.
package ipc
