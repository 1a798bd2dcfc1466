"""A pure-Python client of mpspawn's IPC broker (docs/ipc-protocol.md).

A rank started with a control channel (MPSPAWN_CONTROL_FD) can take
messages off broker queues, open the shared buffers their handles name —
zero-copy, as read-only memory — and publish buffers of its own:

    from mpspawn_ipc import Client
    c = Client.from_env()
    handles, value = c.get(queue_id)          # a message from a queue
    mem = c.open(handles[0])                  # read-only memoryview of the buffer
    arr = numpy.frombuffer(mem, dtype=numpy.float32)   # or torch.frombuffer
    ...
    c.release(handles[0])                     # after dropping every view of mem

Standard library only; Linux, Python 3.9+ (socket.recv_fds).
"""

import array
import fcntl
import mmap
import os
import socket
import struct

MAGIC = b"MPS"
VERSION = 1
HEADER = struct.Struct(">3sBBBBBQI")  # magic, version, type, flags, nfds, reserved, id, length
FRAME_REQUEST, FRAME_REPLY, FRAME_ERROR, FRAME_NOTICE = 5, 6, 4, 8
OP_PUBLISH, OP_OPEN, OP_RELEASE, OP_PUT, OP_GET = 1, 2, 3, 4, 5
KIND_HOST = 1
HANDLE = struct.Struct("<QqiB3x16s")  # id, size, producer, kind, pad, token
ERRORS = {1: "bad handle", 2: "producer gone", 3: "bad request", 4: "broker closed"}


class BrokerError(Exception):
    """An error the broker answered with; .kind is "bad handle", "producer gone", ..."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


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

    @classmethod
    def from_env(cls):
        return cls(int(os.environ["MPSPAWN_CONTROL_FD"]))

    def _send(self, payload, fds=()):
        self.next_id += 1
        hdr = HEADER.pack(MAGIC, VERSION, FRAME_REQUEST, 0, len(fds), 0, self.next_id, len(payload))
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        data = hdr + payload
        sent = self.sock.sendmsg([data], anc)
        if sent < len(data):
            self.sock.sendall(data[sent:])
        return self.next_id

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("control channel closed")
            buf += chunk
        return bytes(buf)

    def _reply(self, want_id):
        """Reads frames until the reply to want_id; notices are skipped."""
        while True:
            data, fds, _, _ = socket.recv_fds(self.sock, HEADER.size, 16)
            if not data:
                raise EOFError("control channel closed")
            data += self._recv_exact(HEADER.size - len(data))
            magic, version, ftype, flags, nfds, _, fid, length = HEADER.unpack(data)
            if magic != MAGIC or version != VERSION or flags or nfds != len(fds):
                for fd in fds:
                    os.close(fd)
                raise ValueError("bad frame from the broker")
            payload = self._recv_exact(length)
            if ftype == FRAME_NOTICE or fid != want_id:
                for fd in fds:
                    os.close(fd)
                continue
            if ftype == FRAME_ERROR:
                for fd in fds:
                    os.close(fd)
                raise BrokerError(ERRORS.get(payload[0], "error"), payload[1:].decode())
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
