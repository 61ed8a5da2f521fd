"""``GET``/``HEAD``/``DELETE /data/<path>`` as a raw ASGI app: large zero-copy body pieces and real wire faults.

# NOTE: raw ASGI, not a FastAPI route, for two reasons: the body goes out as memoryview slices of the stored bytes
# (no per-request copy of the file), and the faults need uvicorn's own ``send``, whose connection cycle holds the
# transport: a TCP reset is SO_LINGER 0 + abort on that transport, which no response class can produce.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hidra_eiger.sim.faults import Faults
from hidra_eiger.sim.filewriter import FileStore

log = logging.getLogger(__name__)

__all__ = ["PIECE_BYTES", "DataApp"]

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

PIECE_BYTES = 4 << 20  # NOTE: large pieces keep the per-piece overhead of the ASGI server small
_RESET_AFTER = 64 << 10  # body bytes a reset response sends first


async def _plain(send: Send, status: int, body: Any = None) -> None:
    raw = b"" if body is None else json.dumps(body).encode()
    headers = [(b"content-length", str(len(raw)).encode())]
    if raw:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


def _cycle(send: Send) -> Any:
    """uvicorn's request/response cycle behind ``send`` (it holds the transport), or None."""
    return getattr(send, "__self__", None)


async def _cut(send: Send, *, reset: bool) -> None:
    """End the connection under a half-sent body: a TCP reset (RST), or a clean close (FIN)."""
    cycle = _cycle(send)
    transport = getattr(cycle, "transport", None)
    if transport is None:  # NOTE: not uvicorn: an exception makes any ASGI server drop the connection
        raise ConnectionAbortedError("simulated connection fault")
    if reset:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()  # NOTE: close with linger 0: the kernel sends RST instead of FIN
    else:
        transport.close()  # NOTE: flushes what was written, then FIN: a body shorter than its Content-Length
    # NOTE: tell uvicorn the connection is gone, so that it neither writes nor logs an unfinished response
    cycle.disconnected = True


class DataApp:
    """Serves the files of ``store`` under ``/data/``; ``faults`` counts requests and picks the faulty ones."""

    def __init__(self, store: FileStore, faults: Faults, knobs: Callable[[], dict[str, Any]]) -> None:
        self.store = store
        self.faults = faults
        self._knobs = knobs

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"][len("/data/"):]
        fault = self.faults.data(method)
        knobs = self._knobs()
        if knobs["data_delay_s"] > 0:
            await asyncio.sleep(knobs["data_delay_s"])  # NOTE: the simulated slow DCU, not synchronisation
        if fault == "fail":
            await _plain(send, 500, {"error": f"simulated failure of {method} /data/{path}"})
        elif method == "DELETE":
            found = self.store.delete(path)
            await _plain(send, 204 if found else 404, None if found else {"error": f"no file {path!r}"})
        elif method in ("GET", "HEAD"):
            await self._get(send, method, path, fault, not knobs["no_content_length"])
        else:
            await _plain(send, 405, {"error": f"{method} is not allowed on /data; GET, HEAD or DELETE"})

    async def _get(self, send: Send, method: str, path: str, fault: str | None, length: bool) -> None:
        found = self.store.read(path)
        if found is None:
            await _plain(send, 404, {"error": f"no file {path!r}"})
            return
        view, mtime_ns = found
        size = len(view)
        headers = [(b"content-type", b"application/octet-stream"),
                   (b"etag", f'"{mtime_ns:x}-{size:x}"'.encode()),
                   (b"last-modified", email.utils.formatdate(mtime_ns / 1e9, usegmt=True).encode())]
        if length:
            headers.append((b"content-length", str(size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        stop = {"reset": min(_RESET_AFTER, size // 2), "truncate": size // 2}.get(fault or "", size)
        for offset in range(0, stop, PIECE_BYTES):
            await send({"type": "http.response.body", "body": view[offset:min(offset + PIECE_BYTES, stop)],
                        "more_body": True})
        if fault is not None:
            await self._drain(send)
            await _cut(send, reset=fault == "reset")
            return
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _drain(send: Send) -> None:
        # NOTE: let the bytes already written leave the transport first, so that the client sees a body that
        # stops part-way rather than no body at all
        transport = getattr(_cycle(send), "transport", None)
        while transport is not None and transport.get_write_buffer_size() and not transport.is_closing():
            await asyncio.sleep(0.001)
