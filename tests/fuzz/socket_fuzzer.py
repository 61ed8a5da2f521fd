"""A bounded socket fuzzer: sends malformed multipart messages to one bound socket of a running process, on loopback.

``Mutator`` makes the messages from real ones (``templates``): random bytes, real messages with bytes flipped, frames
cut, dropped or repeated, JSON fields replaced by hostile values (names of 4,096 bytes, invalid UTF-8, chunk numbers
out of range, chunk counts and sizes that disagree, JSON nested too deeply) and now and then a big frame. ``push``
sends them one way (PULL, ROUTER peers); ``request`` sends each to a REP socket and collects the replies.
``memory_kib`` reads a process's resident memory; ``files_outside`` lists files written outside the allowed dirs.
"""
from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import zmq

__all__ = ["Mutator", "RawPeer", "files_outside", "memory_kib", "push", "request"]

LOOPBACK = "tcp://127.0.0.1:"
INVALID_UTF8 = [b"\x80", b"\xc3(", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff\xfe"]
#: JSON values a peer may put in any field: out of range, of the wrong type, names at and past the limits
HOSTILE_VALUES: list[Any] = [
    -1, 0, 1, 2**31, 2**63, 2**64 + 1, 10**30, -(10**30), 1.5, float("1e308"), True, None, "", [], {}, [[[]]],
    "x" * 4096, "a/" * 2048, "../" * 20 + "escaped", "/etc/passwd", "..", ".hidra-partial", "\udcff\udcfe",
    "\x00", "\n", "é" * 2048, {"nested": {"deeper": [1, 2, 3]}}]
DATA_FIELDS = ["chunk_number", "chunk_count", "filesize", "chunksize", "filename", "relative_path", "last_chunk",
               "htype", "series", "metadata", "confirmation_required", "checksum_algorithm", "file_checksum",
               "chunk_checksum", "op", "file", "offset", "size", "name", "v"]


class Mutator:
    """Deterministic (seeded) stream of malformed messages derived from ``templates``."""

    def __init__(self, templates: list[list[bytes]], seed: int = 13, big_frame: int = 4 << 20,
                 big: bool = True) -> None:
        self.templates = templates
        self.big = big  # NOTE: off for sockets with a message size limit: each big frame costs a reconnect
        self.rng = random.Random(seed)
        self.big_frame = big_frame
        self._big = os.urandom(big_frame)

    def messages(self, count: int) -> Iterator[list[bytes]]:
        kinds: list[Callable[[], list[bytes]]] = [self._random, self._flipped, self._reframed, self._field,
                                                  self._field, self._field, self._hostile_frame]
        for _ in range(count):
            msg = self.rng.choice(kinds)()
            roll = self.rng.random() if self.big else 1.0
            if roll < 0.005:  # NOTE: a few big frames: memory must come back after them
                msg.insert(self.rng.randrange(len(msg) + 1), self._big[:self.rng.randrange(self.big_frame)])
            elif roll < 0.2:
                msg.append(os.urandom(65536))
            yield msg

    def _template(self) -> list[bytes]:
        return list(self.rng.choice(self.templates))

    def _random(self) -> list[bytes]:
        return [self.rng.randbytes(self.rng.randrange(256)) for _ in range(self.rng.randrange(1, 6))]

    def _flipped(self) -> list[bytes]:
        msg = self._template()
        i = self.rng.randrange(len(msg))
        frame = bytearray(msg[i] or b"\x00")
        for _ in range(self.rng.randrange(1, 4)):
            frame[self.rng.randrange(len(frame))] ^= 1 << self.rng.randrange(8)
        msg[i] = bytes(frame)
        return msg

    def _reframed(self) -> list[bytes]:
        msg = self._template()
        how = self.rng.randrange(4)
        i = self.rng.randrange(len(msg))
        if how == 0 and len(msg) > 1:
            del msg[i]
        elif how == 1:
            msg.insert(i, msg[i])
        elif how == 2:
            msg[i] = msg[i][:self.rng.randrange(len(msg[i]) + 1)]
        else:
            msg[i] = b""
        return msg

    def _field(self) -> list[bytes]:
        """A JSON frame of a real message with one or two fields set to hostile values (or raw invalid UTF-8)."""
        msg = self._template()
        i = next((n for n, f in enumerate(msg) if f[:1] in (b"{", b"[")), None)
        if i is None:
            return self._flipped()
        try:
            value = json.loads(msg[i])
        except ValueError:
            return self._flipped()
        obj = value if isinstance(value, dict) else {"targets": value}
        for _ in range(self.rng.randrange(1, 3)):
            obj[self.rng.choice(DATA_FIELDS + list(obj))] = self.rng.choice(HOSTILE_VALUES)
        raw = json.dumps(obj).encode()
        if self.rng.random() < 0.2:  # NOTE: invalid UTF-8 inside the JSON text itself, where a name is
            cut = raw.find(b'"', 2)
            raw = raw[:cut + 1] + self.rng.choice(INVALID_UTF8) + raw[cut + 1:]
        msg[i] = raw
        return msg

    def _hostile_frame(self) -> list[bytes]:
        msg = self._template()
        frame = self.rng.choice([b"[" * 100_000, b'{"a":' * 50_000, b"\x00" * 4096, *INVALID_UTF8,
                                 b"x" * 4096, json.dumps("\udcff").encode(), b"ALIVE_TEST", b"STATUS_CHECK"])
        msg[self.rng.randrange(len(msg))] = frame
        return msg


def push(context: zmq.Context, endpoint: str, socket_type: int, messages: Iterable[list[bytes]],
         on_reply: Callable[[list[bytes]], None] | None = None, until: Callable[[], bool] | None = None,
         timeout_s: float = 60.0) -> int:
    """Send every message through a new socket of ``socket_type`` (PUSH, DEALER); replies, if any, go to
    ``on_reply``; then wait (replies still read) until ``until()`` says the peer handled them. Returns the number
    sent."""
    assert endpoint.startswith(LOOPBACK), endpoint
    sock = context.socket(socket_type)
    sock.linger = 0  # NOTE: ``until`` is what makes sure the peer got everything
    sock.sndhwm = 1000
    sock.reconnect_ivl = 5  # NOTE: a peer with a message size limit drops the connection of an oversized message
    if socket_type == zmq.DEALER:
        sock.rcvhwm = 0  # NOTE: never drop a reply; the peer would count it as dropped
    sock.connect(endpoint)
    sent = 0
    try:
        for msg in messages:
            while not sock.poll(60_000, zmq.POLLOUT | zmq.POLLIN) & zmq.POLLOUT:
                _drain(sock, on_reply)
            sock.send_multipart(msg, copy=False)
            sent += 1
            _drain(sock, on_reply)
        deadline = time.monotonic() + timeout_s
        while until is not None and not until():
            assert time.monotonic() < deadline, f"the peer at {endpoint} did not handle the last message"
            sock.poll(20)
            _drain(sock, on_reply)
    finally:
        sock.close()
    return sent


def _drain(sock: zmq.Socket, on_reply: Callable[[list[bytes]], None] | None) -> None:
    if on_reply is None:
        return
    while sock.poll(0, zmq.POLLIN):
        on_reply(sock.recv_multipart())


def request(context: zmq.Context, endpoint: str, messages: Iterable[list[bytes]],
            timeout_s: float = 30.0) -> list[tuple[list[bytes], list[bytes]]]:
    """Send each message to a REP socket (through a DEALER, so that envelopes can be malformed too: a message
    without the empty delimiter frame must be dropped by the REP socket, not answered or crash it); returns
    ``(request, reply)`` of every well-enveloped request, in order. A missing reply raises ``AssertionError``."""
    assert endpoint.startswith(LOOPBACK), endpoint
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    out: list[tuple[list[bytes], list[bytes]]] = []
    try:
        for n, msg in enumerate(messages):
            if n % 50 == 7 and all(msg):
                # NOTE: no empty delimiter frame at all: malformed at the ZeroMQ level, REP drops it (with an empty
                # frame inside, REP would take the frames before it for routing ids and answer to them)
                sock.send_multipart(msg, copy=False)
                continue
            sock.send_multipart([b"", *msg], copy=False)
            if not sock.poll(int(timeout_s * 1000)):
                raise AssertionError(f"no reply within {timeout_s} s to request {len(out)}: {_short(msg)}")
            empty, *reply = sock.recv_multipart()
            assert empty == b"", f"reply without the empty delimiter: {_short([empty, *reply])}"
            out.append((msg, reply))
    finally:
        sock.close()
    return out


def _short(msg: list[bytes]) -> str:
    return repr([bytes(f)[:60] for f in msg])


class RawPeer:
    """A ZMTP 3.0 peer over a plain TCP socket (NULL mechanism): sends frames libzmq's own sockets would not, and
    keeps no state of its own (a libzmq SUB keeps a trie of its subscriptions too, as big as the publisher's)."""

    def __init__(self, endpoint: str, socket_type: bytes) -> None:
        assert endpoint.startswith(LOOPBACK), endpoint
        self.sock = socket.create_connection(("127.0.0.1", int(endpoint.rpartition(":")[2])), timeout=30)
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
        self.sock.sendall(greeting)
        ready = b"\x05READY" + b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
        self.sock.sendall(b"\x04" + bytes([len(ready)]) + ready)
        # NOTE: the peer's greeting and READY first: libzmq drops a connection whose first message arrives
        # mid-handshake when it is longer than its input buffer
        flags = self._read(64 + 1)[-1]
        self._read(int.from_bytes(self._read(8 if flags & 2 else 1), "big"))

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the peer closed the connection during the ZMTP handshake")
            data += chunk
        return data

    def send(self, frames: list[bytes]) -> bool:
        """Send one message; False once the peer has closed the connection."""
        out = bytearray()
        for n, frame in enumerate(frames):
            more = 1 if n < len(frames) - 1 else 0
            if len(frame) < 256:
                out += bytes([more, len(frame)]) + frame
            else:
                out += bytes([more | 2]) + len(frame).to_bytes(8, "big") + frame
        try:
            self.sock.sendall(out)
        except OSError:
            return False
        return True

    def closed_by_peer(self) -> bool:
        """Did the peer close the connection (rather than send anything, such as its first heartbeat PING, or
        nothing within the socket's timeout)?"""
        try:
            return not self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:  # NOTE: reset by the peer
            return True

    def close(self) -> None:
        self.sock.close()


def memory_kib(pid: int) -> int:
    """Resident memory (VmRSS) of a running process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"process {pid} has no VmRSS (a zombie?)")


def files_outside(base: Path, allowed: Iterable[Path]) -> set[str]:
    """Every file and directory below ``base`` that is not below one of ``allowed``."""
    roots = [str(p.resolve()) for p in allowed]
    found = set()
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if not any(path == r or path.startswith(r + os.sep) or r.startswith(path + os.sep) for r in roots):
                found.add(path)
    return found
