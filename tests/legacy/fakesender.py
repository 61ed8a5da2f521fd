"""A scripted stand-in for the sender side of hidra4-protocol.md, to test clients without the real sender.

``FakeSender`` answers signals on a com port (in a thread, so a client may block on its reply), collects
NEXT/CANCEL on a request port, and pushes data messages built by ``make_messages`` to a client's data socket.
It checks nothing and registers nothing: tests script what it answers and assert what it received.
"""
from __future__ import annotations

import json
import math
import threading
import time
from typing import Any, Callable

import xxhash
import zmq

__all__ = ["FakeSender", "Responder", "default_reply", "make_messages", "metadata_message"]

Responder = Callable[[list[bytes]], "list[bytes] | None"]


def make_messages(filename: str, data: bytes, chunksize: int, *, relative_path: str = "", native: bool = True,
                  **extra: Any) -> list[list[bytes]]:
    """The data messages a sender emits for one file: 4.x fields, plus the ``hidra-file-1.0`` ones if ``native``."""
    count = max(1, math.ceil(len(data) / chunksize))
    base: dict[str, Any] = {
        "filename": filename, "relative_path": relative_path, "source_path": "/ramdisk", "filesize": len(data),
        "file_mod_time": 1700000000.5, "file_create_time": 1700000000.0, "chunksize": chunksize,
        "confirmation_required": False, "version": "4.4.3",
    }
    if native:
        base.update(htype="hidra-file-1.0", chunk_count=count, checksum_algorithm="xxh3_64")
    messages = []
    for number in range(count):
        payload = data[number * chunksize:(number + 1) * chunksize]
        meta = dict(base, chunk_number=number)
        if native:
            meta.update(last_chunk=number == count - 1, chunk_checksum=xxhash.xxh3_64(payload).hexdigest())
            if number == count - 1:
                meta["file_checksum"] = xxhash.xxh3_64(data).hexdigest()
        meta.update(extra)
        messages.append([json.dumps(meta).encode(), payload])
    return messages


def metadata_message(filename: str, relative_path: str = "", filesize: int = 0) -> list[bytes]:
    meta = {"filename": filename, "relative_path": relative_path, "source_path": "/ramdisk", "filesize": filesize,
            "file_mod_time": 1700000000.5, "chunksize": 1000, "chunk_number": 0, "version": "4.4.3"}
    return [json.dumps(meta).encode(), b"null"]


def default_reply(frames: list[bytes], version: str = "4.4.3") -> list[bytes]:
    """An obliging sender: the signal echoed, the version for GET_VERSION."""
    if len(frames) != 4:
        return [b"NO_VALID_SIGNAL"]
    if frames[2] == b"GET_VERSION":
        return [b"GET_VERSION", version.encode()]
    return [frames[2]]


class FakeSender:
    """Com port (ROUTER, so a request can be left unanswered) + request port PULL + data PUSH sockets.

    ``responder(frames)`` returns the reply, or None to leave the request unanswered. Messages put in
    ``on_start`` are pushed (from the com thread) to the first registered target right after a ``START_*``
    was answered with its echo, as a sender would start delivering to a client that has just registered.
    """

    def __init__(self, context: zmq.Context, responder: Responder | None = None) -> None:
        self.context = context
        self.responder: Responder = responder or default_reply
        self.signals: list[list[bytes]] = []
        self.peers: list[bytes] = []  # ZeroMQ routing id of each signal's sender: a new REQ socket gets a new one
        self.requests: list[list[bytes]] = []
        self.com_port = 0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-sender-com", daemon=True)
        self._request_sock = context.socket(zmq.PULL)
        self._request_sock.linger = 0
        self._request_sock.rcvhwm = 1000
        self.request_port = self._request_sock.bind_to_random_port("tcp://127.0.0.1")
        self._pushes: list[zmq.Socket] = []
        self.on_start: list[list[bytes]] = []

    def __enter__(self) -> FakeSender:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("fake sender com port did not come up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        sock = self.context.socket(zmq.ROUTER)  # created and closed in the thread that uses it
        sock.linger = 0
        thread_pushes: list[zmq.Socket] = []
        try:
            self.com_port = sock.bind_to_random_port("tcp://127.0.0.1")
            self._ready.set()
            while not self._stop.is_set():
                if not sock.poll(20):
                    continue
                envelope = sock.recv_multipart()
                split = envelope.index(b"") + 1
                frames = envelope[split:]
                self.peers.append(envelope[0])
                self.signals.append(frames)
                reply = self.responder(frames)
                if reply is not None:
                    sock.send_multipart(envelope[:split] + reply)
                if reply and frames[2:3] == [reply[0]] and reply[0].startswith(b"START_") and self.on_start:
                    push = self._connect_push(json.loads(frames[3])[0][0])
                    thread_pushes.append(push)
                    for message in self.on_start:
                        push.send_multipart(message)
        finally:
            sock.close()
            for push in thread_pushes:
                push.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._request_sock.close()
        for push in self._pushes:
            push.close(linger=0)
        self._pushes.clear()

    # -- what a test uses ---------------------------------------------------------------------------------------

    def signal_names(self) -> list[str]:
        return [frames[2].decode() if len(frames) > 2 else "<malformed>" for frames in self.signals]

    def wait_signals(self, count: int, timeout_s: float = 5.0) -> list[list[bytes]]:
        deadline = time.monotonic() + timeout_s
        while len(self.signals) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.signals)} signal(s) seen, {count} expected: {self.signal_names()}")
            time.sleep(0.002)
        return self.signals

    def data_to(self, socket_id: str) -> zmq.Socket:
        """A PUSH connected to the client's data socket named by ``"host:port"`` (always via 127.0.0.1)."""
        push = self._connect_push(socket_id)
        self._pushes.append(push)
        return push

    def _connect_push(self, socket_id: str) -> zmq.Socket:
        port = int(socket_id.rpartition(":")[2])
        push = self.context.socket(zmq.PUSH)
        push.linger = 0
        push.sndhwm = 10_000
        push.connect(f"tcp://127.0.0.1:{port}")
        return push

    def collect_requests(self, count: int, timeout_s: float = 5.0, quiet_ms: int = 0) -> list[list[bytes]]:
        """Wait until ``count`` request messages arrived; then keep listening ``quiet_ms`` for surplus ones."""
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0:
                raise AssertionError(f"{len(self.requests)} request(s) seen, {count} expected: {self.requests}")
            if self._request_sock.poll(left):
                self.requests.append(self._request_sock.recv_multipart())
        while quiet_ms and self._request_sock.poll(quiet_ms):
            self.requests.append(self._request_sock.recv_multipart())
        return self.requests
