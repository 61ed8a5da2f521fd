"""libzmq 4.3 aborts a process (``Assertion failed: !_io_error (src/stream_engine_base.cpp:310)``) when a
connection whose input is held by back-pressure is reset and a ZMTP PING from the peer is among the bytes it
had already read. A storage receiver is exactly such a process (a full data queue while commits are behind), and
a 10 s link cut resets its data connections: the sender must not send PINGs on them.

The peer here is a raw TCP socket speaking ZMTP 3.0 (NULL mechanism) as a PULL, so it sees every command frame.
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from integration.hidra_proc import Hidra, sender_overrides

pytestmark = pytest.mark.integration

_GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31
_HEARTBEAT_MS = 50  # the sender's ZMTP heartbeat interval in this test: a PING would come every 50 ms


def _frame(body: bytes, command: bool) -> bytes:
    assert len(body) < 256
    return bytes([0x04 if command else 0, len(body)]) + body


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            raise ConnectionError("the sender closed the data connection")
        data += part
    return data


def _commands(conn: socket.socket, until: float) -> list[bytes]:
    """The names of the command frames the peer sends until ``until`` (time.monotonic)."""
    names = []
    while (left := until - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            flags = _exactly(conn, 1)[0]
        except TimeoutError:
            break
        size = struct.unpack(">Q", _exactly(conn, 8))[0] if flags & 0x02 else _exactly(conn, 1)[0]
        body = _exactly(conn, size)
        if flags & 0x04:
            names.append(body[1:1 + body[0]])
    return names


def test_sender_sends_no_zmtp_pings_on_its_storage_data_connection(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    confirmations = socket.create_server(("127.0.0.1", 0))  # NOTE: holds a port nobody answers on
    data = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    for d in ("source", "state"):
        (tmp_path / d).mkdir()
    sender = Hidra("sender", tmp_path / "sender.log", [
        *sender_overrides(tmp_path / "source", tmp_path / "state", data,
                          f"tcp://127.0.0.1:{confirmations.getsockname()[1]}"),
        f"sender.transports={{tcp: {{heartbeat_ivl_ms: {_HEARTBEAT_MS}, heartbeat_timeout_ms: 10000}}}}"])
    try:
        listener.settimeout(20)
        conn, _peer = listener.accept()
        with conn:
            conn.sendall(_GREETING)
            assert _exactly(conn, 64)[:1] == b"\xff"
            ready = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", 4) + b"PULL"
            conn.sendall(_frame(ready, command=True))
            # NOTE: 20 heartbeat intervals; with heartbeats on, PINGs come every one of them.
            commands = _commands(conn, time.monotonic() + 20 * _HEARTBEAT_MS / 1000)
        assert b"READY" in commands, commands
        assert b"PING" not in commands, "the sender sends ZMTP PINGs on its storage data connection"
    finally:
        sender.kill()
        listener.close()
        confirmations.close()
