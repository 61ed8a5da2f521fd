"""Helpers for event sources that read a ZeroMQ stream (a detector, a bsread sender, an ingest socket): one
connected socket, and messages taken in bounded batches without copying their frames."""
from __future__ import annotations

from typing import Iterator

import zmq

from hidra_core.security import secure_socket

__all__ = ["connect_stream", "receive_batch"]


def connect_stream(context: zmq.Context, endpoint: str, rcvhwm: int, *, subscribe: bool = False) -> zmq.Socket:
    """A PULL (or, with ``subscribe``, a SUB taking everything) socket connected to ``endpoint``; ``ValueError``
    names the endpoint when it cannot connect (nothing is left open).

    Detector streams (DECTRIS, bsread senders) cannot speak CURVE: with ``security.curve`` on, the stream must be
    listed in ``security.plain`` (``stream``), else ``ValueError`` says so; it is then read unencrypted."""
    sock = context.socket(zmq.SUB if subscribe else zmq.PULL)
    sock.linger = 0
    sock.rcvhwm = rcvhwm  # NOTE: before connect, or the first pipe keeps the default
    if subscribe:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        secure_socket(sock, "stream", server=False)
        sock.connect(endpoint)
    except ValueError as exc:
        sock.close()
        raise ValueError(f"{endpoint}: {exc}") from None
    except zmq.ZMQError as exc:
        sock.close()
        raise ValueError(f"cannot connect to {endpoint!r}: {exc}") from None
    return sock


def receive_batch(sock: zmq.Socket, timeout_ms: int, max_messages: int, max_bytes: int) -> Iterator[list[memoryview]]:
    """The messages that are there (each as its frames' buffers, zero-copy), waiting at most ``timeout_ms`` for the
    first, until ``max_messages`` or ``max_bytes`` are taken."""
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return
    received = nbytes = 0
    while received < max_messages and nbytes < max_bytes:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        received += 1
        nbytes += sum(len(f) for f in frames)
        yield [f.buffer for f in frames]
