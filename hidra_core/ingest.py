"""ZeroMQ ingest: a DAQ program pushes files from memory to a HiDRA sender (source ``zmq_ingest``), no disk involved.

The client::

    from hidra_core.ingest import Ingest

    with Ingest("tcp://daq-sender:50300") as ingest:
        ingest.send_file("run1/image_00001.raw", frame)      # one message
        ingest.create_file("run1/log.txt")                     # or in pieces
        ingest.write(b"first part ")
        ingest.write(b"second part")
        ingest.close_file(wait=True)                           # returns once the sender holds the file

Wire format ``hidra-ingest`` version 1 (this module is its only encoder and decoder, for the client and the
source alike). A producer's DEALER socket talks to the source's ROUTER socket. Every message starts with a header
frame, a UTF-8 JSON object of at most ``MAX_HEADER`` bytes with ``"v": 1`` and ``"op"``; ``file`` is the
producer's file number (an int that grows by one per file). Producer to source:

- ``{"v": 1, "op": "create", "file": N, "name": "dir/name", "producer": "host:pid"}``: start file N
- ``{"v": 1, "op": "write", "file": N, "offset": BYTES_SO_FAR}`` + one data frame: append to file N
- ``{"v": 1, "op": "close", "file": N, "size": TOTAL}``: file N is complete
- ``{"v": 1, "op": "abort", "file": N}``: forget file N
- ``{"v": 1, "op": "file", "file": N, "name": "dir/name", "producer": "host:pid"}`` + one data frame: a whole file

Source to producer: ``{"v": 1, "op": "ack", "upto": N, "first": F}`` (every file up to N is accounted for: held by
the sender, or refused with an error before; F is the first file the source saw from this producer: files below it
that were never acknowledged never reached it), ``{"v": 1, "op": "error", "file": N, "error": "why"}`` (file N is
refused),
``{"v": 1, "op": "ping"}`` (ignored; the source checks that the producer is still
connected).

A producer has at most one file open; names are relative ``/``-separated paths checked like every name the
receiver takes (``hidra_core.paths.split_checked``). Offsets and sizes let the source refuse a file whose bytes
did not all arrive.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import zmq

from hidra_core.errors import HidraError, PathRefused, ProtocolError
from hidra_core.paths import split_checked

__all__ = ["CREATE", "VERSION", "Ingest", "IngestError", "IngestMessage", "decode", "encode", "split_name"]

log = logging.getLogger(__name__)

VERSION = 1
MAX_HEADER = 64 * 1024
CREATE, WRITE, CLOSE, ABORT, FILE = "create", "write", "close", "abort", "file"
ACK, ERROR, PING = "ack", "error", "ping"
#: op -> (required int fields, required str fields, data frames)
_OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...], int]] = {
    CREATE: (("file",), ("name", "producer"), 0), WRITE: (("file", "offset"), (), 1),
    CLOSE: (("file", "size"), (), 0), ABORT: (("file",), (), 0), FILE: (("file",), ("name", "producer"), 1),
    ACK: (("upto",), (), 0), ERROR: (("file",), ("error",), 0), PING: ((), (), 0),
}
#: buffers of at least this many bytes go to ZeroMQ without a copy
ZERO_COPY_MIN = 64 * 1024


class IngestError(HidraError):
    """The ingest endpoint refused a file, or could not be reached in time; the message names which and why."""


@dataclass(frozen=True)
class IngestMessage:
    """One decoded message: its op, header fields and data buffer (``None`` for ops without data)."""

    op: str
    fields: dict[str, Any]
    data: Any = None

    @property
    def file(self) -> int:
        return int(self.fields.get("file", -1))


def encode(op: str, **fields: Any) -> bytes:
    """The header frame of a message (the data frame, if the op has one, goes after it as it is)."""
    return json.dumps({"v": VERSION, "op": op, **fields}, separators=(",", ":")).encode()


def decode(frames: list[Any]) -> IngestMessage:
    """A message from its frames (buffers; the data frame is kept as it is, zero-copy); ``ProtocolError`` says
    what is wrong."""
    if not frames:
        raise ProtocolError("empty message")
    head = memoryview(frames[0])
    if head.nbytes > MAX_HEADER:
        raise ProtocolError(f"header of {head.nbytes} bytes (at most {MAX_HEADER})")
    try:
        header = json.loads(bytes(head).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # NOTE: RecursionError: nested too deeply
        raise ProtocolError("header is not a UTF-8 JSON object") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if header.get("v") != VERSION:
        raise ProtocolError(f"unsupported version {header.get('v')!r} (this side speaks {VERSION})")
    op = header.get("op")
    if not isinstance(op, str) or op not in _OPS:  # NOTE: a list or an object is unhashable
        raise ProtocolError(f"unknown op {op!r}")
    ints, strs, data_frames = _OPS[op]
    for key in ints:
        if type(header.get(key)) is not int or header[key] < 0:
            raise ProtocolError(f"{op}: {key!r} must be a non-negative integer, got {header.get(key)!r}")
    for key in strs:
        if not isinstance(header.get(key), str):
            raise ProtocolError(f"{op}: {key!r} must be a string, got {header.get(key)!r}")
    if len(frames) != 1 + data_frames:
        raise ProtocolError(f"{op}: takes {data_frames} data frame(s), got {len(frames) - 1}")
    return IngestMessage(op, header, frames[1] if data_frames else None)


def split_name(name: str) -> tuple[str, str]:
    """``(relative_path, filename)`` of a producer's file name; ``PathRefused`` names what is wrong."""
    if name.startswith("/"):  # NOTE: "/x" would split into "" and "x", which alone pass the check
        raise PathRefused(f"name {name!r} is absolute")
    relative_path, _, filename = name.rpartition("/")
    split_checked(relative_path, filename)
    return relative_path, filename


class Ingest:
    """A producer: sends files to a ``zmq_ingest`` source. Not thread-safe (one socket, owned by its user).

    ``timeout_s`` bounds every wait (a send the sender does not take, acknowledgements); ``None`` waits for ever,
    which turns a slow storage path into back-pressure on the producer. At most ``window`` files may be
    unacknowledged; the next one waits. Buffers of at least ``ZERO_COPY_MIN`` bytes are sent without a copy: do not
    change them until the file is acknowledged (``close_file(wait=True)``, ``flush()``). ``keys``
    (``hidra_core.client.ClientKeys``): for a sender with ``security.curve`` on, whose ``allow_producers`` names
    this producer's key.
    """

    def __init__(self, endpoint: str, *, producer: str | None = None, timeout_s: float | None = 30.0,
                 window: int = 256, hwm: int = 8, context: zmq.Context | None = None, keys: Any = None) -> None:
        self.endpoint = endpoint
        self.producer = producer or f"{socket.gethostname()}:{os.getpid()}"
        self.timeout_s = timeout_s
        self.window = window
        self._errors: list[str] = []
        self._seq = self._acked = 0
        self._open: tuple[int, str] | None = None
        self._offset = 0
        self._context = context or zmq.Context.instance()
        self._sock = self._context.socket(zmq.DEALER)
        self._sock.linger = 0
        self._sock.sndhwm = hwm
        self._sock.rcvhwm = 0  # NOTE: acks and errors are small and must never be dropped
        # NOTE: not ZMQ_IMMEDIATE: that drops what is queued when a connection drops; queued messages go out after
        # the reconnect instead (a message lost mid-write shows as a gap the source reports), and an unreachable
        # source fills the high-water mark, then a send or the wait for acknowledgements times out
        self._sock.sndtimeo = -1 if timeout_s is None else int(timeout_s * 1000)
        # NOTE: a fixed routing id survives a reconnect, so the source can tell it is the same producer
        self._sock.routing_id = uuid.uuid4().bytes
        self._sock.heartbeat_ivl, self._sock.heartbeat_timeout = 1000, 10_000
        if keys is not None:
            keys.client(self._sock)
        self._sock.connect(endpoint)

    @property
    def acknowledged(self) -> int:
        """Files the sender accounted for (holds them, or refused them with an error), from the first one on."""
        return self._acked

    # -- files --------------------------------------------------------------------------------------------

    def create_file(self, name: str) -> None:
        """Start a file; ``write`` appends to it, ``close_file`` completes it."""
        if self._open is not None:
            raise IngestError(f"{self._open[1]!r} is still open: close_file() first")
        self._raise_errors()
        self._seq += 1
        self._send([encode(CREATE, file=self._seq, name=name, producer=self.producer)])
        self._open, self._offset = (self._seq, name), 0

    def write(self, data: Any) -> None:
        """Append a bytes-like object to the open file."""
        if self._open is None:
            raise IngestError("write() without an open file: create_file() first")
        size = memoryview(data).nbytes
        self._send([encode(WRITE, file=self._open[0], offset=self._offset), data], copy=size < ZERO_COPY_MIN)
        self._offset += size

    def close_file(self, wait: bool = False) -> None:
        """Complete the open file; with ``wait``, return only once the sender holds it (or raise its error)."""
        if self._open is None:
            raise IngestError("close_file() without an open file")
        seq = self._open[0]
        self._send([encode(CLOSE, file=seq, size=self._offset)])
        self._open = None
        self._settle(seq if wait else seq - self.window)

    def abort_file(self) -> None:
        """Forget the open file: the source discards what it got of it."""
        if self._open is not None:
            self._send([encode(ABORT, file=self._open[0])])
            self._open = None

    def send_file(self, name: str, data: Any, wait: bool = False) -> None:
        """A whole file in one message (zero-copy); ``wait`` as in ``close_file``."""
        if self._open is not None:
            raise IngestError(f"{self._open[1]!r} is still open: close_file() first")
        self._seq += 1
        size = memoryview(data).nbytes
        self._send([encode(FILE, file=self._seq, name=name, producer=self.producer), data],
                   copy=size < ZERO_COPY_MIN)
        self._settle(self._seq if wait else self._seq - self.window)

    def flush(self) -> None:
        """Wait until the sender accounted for every file sent; raise the first refusal."""
        self._settle(self._seq)

    def close(self) -> None:
        """``flush`` (an open file is aborted), then release the socket."""
        if self._sock.closed:
            return
        try:
            self.abort_file()
            self.flush()
        finally:
            self._sock.close(linger=0)

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()
        else:  # NOTE: an exception in the body: do not wait for the sender on top of it
            self._sock.close(linger=0)

    # -- the socket ---------------------------------------------------------------------------------------

    def _send(self, frames: list[Any], copy: bool = True) -> None:
        try:
            self._sock.send_multipart(frames, copy=copy)
        except zmq.Again:
            raise IngestError(f"{self.endpoint}: could not send within {self.timeout_s} s (no sender listening, or"
                              " it does not take data: storage slow or stopped)") from None

    def _settle(self, upto: int) -> None:
        """Take replies until every file up to ``upto`` is acknowledged, then raise a refusal if there was one."""
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        self._take_replies(0)
        while self._acked < upto:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise IngestError(f"{self.endpoint}: no acknowledgement of file {upto} within {self.timeout_s} s"
                                  f" ({self._seq - self._acked} files unacknowledged)")
            self._take_replies(1000 if left is None else max(1, min(1000, int(left * 1000))))
        self._raise_errors()

    def _take_replies(self, timeout_ms: int) -> None:
        while self._sock.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            try:
                reply = decode(self._sock.recv_multipart())
            except ProtocolError as exc:
                log.warning("%s: unreadable reply: %s", self.endpoint, exc)
                continue
            if reply.op == ACK:
                self._acknowledged(reply.fields["upto"], reply.fields.get("first"))
            elif reply.op == ERROR:
                self._errors.append(reply.fields["error"])

    def _acknowledged(self, upto: int, first: Any) -> None:
        if isinstance(first, int) and first > self._acked + 1:
            # NOTE: the source never saw these files (a sender restarted while they were on the way)
            self._errors.append(f"files {self._acked + 1} to {first - 1} never reached the sender (restarted?)")
        self._acked = max(self._acked, upto)

    def _raise_errors(self) -> None:
        self._take_replies(0)
        if self._errors:
            first, more = self._errors[0], len(self._errors) - 1
            self._errors.clear()
            raise IngestError(f"{self.endpoint} refused: {first}" + (f" (and {more} more)" if more else ""))
