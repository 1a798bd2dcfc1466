"""A pure-Python client of mpspawn's IPC broker (docs/ipc-protocol.md).

A rank started with a control channel (MPSPAWN_CONTROL_FD) can take
messages off broker queues, open the shared buffers their handles name —
zero-copy, as read-only memory — and publish buffers of its own:

    from mpspawn.ipc import Client
    c = Client.from_env()
    handles, value = c.get(queue_id)          # a message from a queue
    mem = c.open(handles[0])                  # read-only memoryview of the buffer
    arr = numpy.frombuffer(mem, dtype=numpy.float32)   # or torch.frombuffer
    ...
    c.release(handles[0])                     # after dropping every view of mem

Every failure is an exception: an error the broker answers with is a
BrokerError; when the broker closes the channel (a protocol violation it
names in an error frame, or end of stream) that call and every later one
raise ChannelClosed, naming why.

Standard library only; Linux, Python 3.9+ (socket.recv_fds).

send_fds and recv_fds are the one place mpspawn's Python code passes file
descriptors (SCM_RIGHTS): this client and the launcher's forkserver (which
is sent this module's source) both use them.
"""

import array
import fcntl
import mmap
import os
import socket
import struct

# The protocol's constants, one per line: TestPythonConstants (package
# ipc) checks each against the Go side.
MAGIC = b"MPS"
VERSION = 1
MAX_FILES = 16
HEADER = struct.Struct(">3sBBBBBQI")  # magic, version, type, flags, nfds, reserved, id, length
HANDLE = struct.Struct("<QqiB3x16s")  # id, size, producer, kind, pad, token

FRAME_HELLO = 1
FRAME_ARGS = 2
FRAME_RESULT = 3
FRAME_ERROR = 4
FRAME_REQUEST = 5
FRAME_REPLY = 6
FRAME_CLOSE = 7
FRAME_NOTICE = 8

OP_PUBLISH = 1
OP_OPEN = 2
OP_RELEASE = 3
OP_PUT = 4
OP_GET = 5
OP_TASK_DONE = 6
OP_JOIN = 7
OP_WAIT_UNHELD = 8
OP_CHECK = 9
OP_PUT_BATCH = 10
OP_GET_BATCH = 11
OP_CANCEL = 12

KIND_HOST = 1
KIND_FD = 2
KIND_PRODUCER_OWNED = 3

ERR_OTHER = 0
ERR_BAD_HANDLE = 1
ERR_PRODUCER_GONE = 2
ERR_BAD_REQUEST = 3
ERR_CLOSED = 4
ERR_PROTOCOL = 5
ERR_LIMIT = 6

NOTICE_PRODUCER_GONE = 1
NOTICE_FREED = 2

ERRORS = {
    ERR_OTHER: "error",
    ERR_BAD_HANDLE: "bad handle",
    ERR_PRODUCER_GONE: "producer gone",
    ERR_BAD_REQUEST: "bad request",
    ERR_CLOSED: "broker closed",
    ERR_PROTOCOL: "protocol violation",
    ERR_LIMIT: "limit reached",
}


def send_fds(sock, data, fds=()):
    """Sends data with fds attached (SCM_RIGHTS) in one sendmsg, and
    returns how many bytes went out."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    return sock.sendmsg([data], anc)


def recv_fds(sock, size, max_fds):
    """Receives up to size bytes and at most max_fds descriptors (close-on-
    exec): (data, fds, flags), where flags has MSG_TRUNC or MSG_CTRUNC when
    bytes or descriptors did not fit."""
    data, fds, flags, _ = socket.recv_fds(sock, size, max_fds)
    return data, fds, flags


class BrokerError(Exception):
    """An error the broker answered with; .kind is "bad handle", "producer gone",
    "limit reached", ... (ERRORS)."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class ChannelClosed(BrokerError, EOFError):
    """The broker closed the channel: .kind is "protocol violation" (the
    message says which) or "end of stream". Every later call raises it too."""


class Handle:
    """A handle as it travels: 40 bytes, see docs/ipc-protocol.md."""

    def __init__(self, raw):
        if len(raw) != HANDLE.size:
            raise ValueError("a handle is 40 bytes")
        self.raw = bytes(raw)
        self.id, self.size, self.producer, self.kind, self.token = HANDLE.unpack(raw)

    def __repr__(self):
        return f"Handle(id={self.id}, size={self.size}, kind={self.kind}, producer={self.producer})"


class Client:
    """One rank's connection to the broker, over its inherited control socket."""

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        self.next_id = 0
        self.maps = {}
        self.closed = None  # the ChannelClosed that ended the channel

    @classmethod
    def from_env(cls):
        return cls(int(os.environ["MPSPAWN_CONTROL_FD"]))

    def _send(self, payload, fds=()):
        if self.closed:
            raise self.closed
        self.next_id += 1
        hdr = HEADER.pack(MAGIC, VERSION, FRAME_REQUEST, 0, len(fds), 0, self.next_id, len(payload))
        data = hdr + payload
        try:
            sent = send_fds(self.sock, data, fds)
            if sent < len(data):
                self.sock.sendall(data[sent:])
        except (BrokenPipeError, ConnectionResetError):
            # The broker closed the channel: what it said last says why.
            self._reply(None)
        return self.next_id

    def _close(self, kind, message):
        self.closed = ChannelClosed(kind, message)
        raise self.closed

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                self._close("end of stream", "control channel closed by the launcher inside a frame")
            buf += chunk
        return bytes(buf)

    def _reply(self, want_id):
        """Reads frames until the reply to want_id; notices are skipped. An
        error frame that is no reply (id 0, or a protocol violation) means
        the broker closes the channel."""
        if self.closed:
            raise self.closed
        while True:
            try:
                data, fds, _ = recv_fds(self.sock, HEADER.size, MAX_FILES)
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                self._close("end of stream", "control channel closed by the launcher (end of stream)")
            data += self._recv_exact(HEADER.size - len(data))
            magic, version, ftype, flags, nfds, _, fid, length = HEADER.unpack(data)
            if magic != MAGIC or version != VERSION or flags or nfds != len(fds):
                for fd in fds:
                    os.close(fd)
                self._close("protocol violation", "bad frame from the broker")
            payload = self._recv_exact(length)
            if ftype == FRAME_ERROR and payload[:1] == bytes([ERR_PROTOCOL]):
                for fd in fds:
                    os.close(fd)
                self._close(ERRORS[ERR_PROTOCOL], payload[1:].decode(errors="replace"))
            if ftype == FRAME_NOTICE or fid != want_id:
                for fd in fds:
                    os.close(fd)
                continue
            if ftype == FRAME_ERROR:
                for fd in fds:
                    os.close(fd)
                code = payload[0] if payload else ERR_OTHER
                raise BrokerError(ERRORS.get(code, "error"), payload[1:].decode(errors="replace"))
            return payload, fds

    def _call(self, payload, fds=()):
        return self._reply(self._send(payload, fds))

    def get(self, queue_id, capacity=0):
        """Takes the oldest message of a queue: (handles, value bytes). The
        value is encoded by the Go side (gob, or raw plain data); the
        handles are held by this rank until released."""
        payload, _ = self._call(struct.pack("<BQI", OP_GET, queue_id, capacity))
        (n,) = struct.unpack_from("<H", payload)
        handles = [Handle(payload[2 + i * 40: 42 + i * 40]) for i in range(n)]
        return handles, payload[2 + n * 40:]

    def put(self, queue_id, value, handles=(), capacity=0):
        """Puts a message: raw value bytes and the handles it carries."""
        body = struct.pack("<BQIH", OP_PUT, queue_id, capacity, len(handles))
        body += b"".join(h.raw for h in handles) + value
        self._call(body)

    def open(self, handle):
        """Maps a host buffer read-only and returns a memoryview of it."""
        _, fds = self._call(bytes([OP_OPEN]) + handle.raw)
        if len(fds) != 1:
            raise ValueError("no descriptor for the handle")
        try:
            mem = mmap.mmap(fds[0], handle.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fds[0])
        self.maps.setdefault(handle.id, []).append(mem)
        return memoryview(mem)

    def release(self, handle):
        """Drops this rank's hold on handle (and closes its mappings here:
        release every view of them first)."""
        for mem in self.maps.pop(handle.id, []):
            mem.close()
        self._call(bytes([OP_RELEASE]) + handle.raw)

    def publish(self, data):
        """Copies data into a new sealed memfd and publishes it: returns the handle."""
        fd = os.memfd_create("mpspawn-buffer", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, len(data))
            with mmap.mmap(fd, len(data)) as m:
                m[:] = data
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            payload, _ = self._call(struct.pack("<BBQ", OP_PUBLISH, KIND_HOST, len(data)), [fd])
        finally:
            os.close(fd)
        return Handle(payload)
