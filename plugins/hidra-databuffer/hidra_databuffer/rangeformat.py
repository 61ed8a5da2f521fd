"""The binary form of a §8 query answer, ``application/x-hidra-databuffer; version=1``: the one codec of both the
buffer's query API (encoding) and the HDF5 writer (decoding).

A client opts in with the HTTP ``Accept`` header (``ACCEPT``); the request body stays the §8 JSON. The answer is
the same list of channel entries as the JSON one, but values travel as raw little-endian array bytes, so nothing
parses numbers from text. Framing (all integers little-endian)::

    stream  = MAGIC version:u32 record*        the last record is END (complete) or ERROR
    record  = kind:u8 header_len:u32 payload_len:u64 header payload
    header  = UTF-8 JSON object

* ``CHANNEL`` ``{"channel": {"name", "backend"}, "configs": [...]}``: starts the next entry of the list.
* ``EVENTS`` ``{"type", "shape", "events": [{event fields except value}, ...]}``: events of the current entry
  that share one type and shape; the payload holds their values back to back (``count × itemsize`` each), or,
  for ``string``, the header holds them as ``"strings"``. Without ``value`` in ``eventFields`` the payload is
  empty and events get no ``value``.
* ``END`` ``{}``; ``ERROR`` ``{"status", "error"}``: a failure after the answer began (HTTP 200 already sent).

Decoded, scalars are numpy scalars and arrays flat read-only numpy arrays; everything else is as in the JSON.
The buffer makes every piece before it answers, so the answer has a Content-Length (no chunked framing).
"""
from __future__ import annotations

import json
import struct
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from hidra_databuffer._decode import ChannelConfig, decode
from hidra_databuffer.values import TYPES

__all__ = ["ACCEPT", "CONTENT_TYPE", "MEDIA_TYPE", "VERSION", "Buffers", "FormatError", "Reader", "accepts",
           "encode_channel", "encode_end", "encode_error", "encode_events"]

MEDIA_TYPE = "application/x-hidra-databuffer"
VERSION = 1
CONTENT_TYPE = f"{MEDIA_TYPE}; version={VERSION}"
#: what the writer sends: the binary form if the server has it, else the spec's JSON
ACCEPT = f"{CONTENT_TYPE}, application/json;q=0.5"
MAGIC = b"HDBRANGE"
CHANNEL, EVENTS, END, ERROR = b"C", b"E", b"Z", b"X"
_RECORD = struct.Struct("<cIQ")
_VERSION = struct.Struct("<I")
_BLOCK_BYTES = 16 << 20  # NOTE: events per EVENTS record: few JSON headers; long runs of images written without a copy
_MAX_HEADER = 256 << 20


class FormatError(ValueError):
    """A binary answer that is truncated, of another version or malformed; the text says which."""


def accepts(accept_header: str) -> bool:
    """Whether an ``Accept`` header asks for this format in this version (no version given: this one)."""
    for media_range in accept_header.split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        if kind.lower() != MEDIA_TYPE:
            continue
        versions = [p.split("=", 1)[1].strip() for p in params if p.lower().startswith("version=")]
        if not versions or versions[0] == str(VERSION):
            return True
    return False


# --- encoding (the buffer) ---------------------------------------------------------------------------------------
def _record(kind: bytes, header: dict[str, Any], payload_len: int = 0) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return _RECORD.pack(kind, len(text), payload_len) + text


def preamble() -> bytes:
    return MAGIC + _VERSION.pack(VERSION)


def encode_channel(channel: dict[str, Any], configs: list[dict[str, Any]]) -> bytes:
    return _record(CHANNEL, {"channel": channel, "configs": configs})


def encode_end() -> bytes:
    return _record(END, {})


def encode_error(status: int, error: str) -> bytes:
    return _record(ERROR, {"status": status, "error": error})


def _raw(config: ChannelConfig, blob: bytes, offset: int, size: int) -> bytes | memoryview | str:
    """One value as little-endian bytes (a view of the stored frame when it already is), or a string."""
    view = memoryview(blob)[offset:offset + size]
    if config.type != "string" and config.compression == "none" and config.encoding == "little" \
            and size == config.count * config.spec.dtype.itemsize:
        return view
    value = decode(config, view)  # NOTE: raises BadValue for a frame that does not fit, as the JSON path does
    if isinstance(value, str):
        return value
    return np.ascontiguousarray(value, dtype=np.dtype(TYPES[config.type]).newbyteorder("<")).tobytes()


Row = tuple[dict[str, Any], ChannelConfig, bytes, int, int]  # (event fields but value, config, blob, offset, size)


def encode_events(rows: Iterable[Row], with_value: bool) -> Iterator[bytes | memoryview]:
    """EVENTS records for one channel's events (ascending), a record per run of one type and shape."""
    metas: list[dict[str, Any]] = []
    values: list[bytes | memoryview | str] = []
    kind: tuple[str, tuple[int, ...]] | None = None
    size = 0
    for meta, config, blob, offset, length in rows:
        if metas and (kind != (config.type, config.shape) or size >= _BLOCK_BYTES):
            yield from _events_record(kind, metas, values)
            metas, values, size = [], [], 0
        kind = (config.type, config.shape)
        metas.append(meta)
        if with_value:
            values.append(_raw(config, blob, offset, length))
            size += length + 64
        else:
            size += 64
    if metas:
        yield from _events_record(kind, metas, values)


def _events_record(kind: Any, metas: list[dict[str, Any]], values: list[Any]) -> Iterator[bytes | memoryview]:
    header: dict[str, Any] = {"type": kind[0], "shape": list(kind[1]), "events": metas}
    if kind[0] == "string" and values:
        header["strings"] = values
        values = []
    yield _record(EVENTS, header, sum(len(v) for v in values))
    yield from values


# --- decoding (the writer) ---------------------------------------------------------------------------------------
class Reader:
    """Reads one binary answer from ``read(n)`` (a file-like's read: fewer bytes only at the end), or with
    ``readinto(buffer)`` (a file-like's readinto: 0 only at the end) when given: values are then read from the
    socket straight into the arrays the writer gets, with no join of pieces."""

    def __init__(self, read: Callable[[int], bytes], readinto: Callable[[memoryview], int] | None = None,
                 buffers: Buffers | None = None) -> None:
        self._read = read
        self._readinto = readinto
        self._buffers = buffers or Buffers(0)
        self.nbytes = 0

    def _exactly(self, n: int) -> bytes | memoryview:
        if self._readinto is not None:
            return self._into(n)
        pieces, got = [], 0
        while got < n:
            more = self._read(n - got)
            if not more:
                raise FormatError(f"binary answer truncated after {self.nbytes + got} bytes")
            pieces.append(more)
            got += len(more)
        self.nbytes += n
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _into(self, n: int) -> memoryview:
        view = self._buffers.take(n)
        got = 0
        while got < n:
            more = self._readinto(view[got:])  # type: ignore[misc]
            if not more:
                raise FormatError(f"binary answer truncated after {self.nbytes + got} bytes")
            got += more
        self.nbytes += n
        return view.toreadonly()

    def answer(self) -> list[dict[str, Any]]:
        """The §8 list of channel entries; ``FormatError`` for a broken stream, ``ServerError`` for ERROR."""
        head = self._exactly(len(MAGIC) + _VERSION.size)
        if head[:len(MAGIC)] != MAGIC:
            raise FormatError(f"not a {MEDIA_TYPE} answer: it starts with {bytes(head[:len(MAGIC)])!r}")
        version = _VERSION.unpack_from(head, len(MAGIC))[0]
        if version != VERSION:
            raise FormatError(f"{MEDIA_TYPE} version {version} is not supported (only {VERSION})")
        entries: list[dict[str, Any]] = []
        while True:
            kind, header, payload = self._next()
            if kind == END:
                return entries
            if kind == ERROR:
                raise ServerError(header)
            if kind == CHANNEL:
                entries.append({"channel": header.get("channel"), "configs": header.get("configs", []),
                                "data": []})
            elif kind == EVENTS and entries:
                entries[-1]["data"].extend(_events(header, payload))
            else:
                raise FormatError(f"unexpected record {kind!r} in a {MEDIA_TYPE} answer")

    def _next(self) -> tuple[bytes, dict[str, Any], bytes | memoryview]:
        kind, header_len, payload_len = _RECORD.unpack(self._exactly(_RECORD.size))
        if header_len > _MAX_HEADER:
            raise FormatError(f"record header of {header_len} bytes: not a {MEDIA_TYPE} answer")
        try:
            header = json.loads(bytes(self._exactly(header_len)))
        except ValueError as exc:
            raise FormatError(f"record header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise FormatError("record header is not a JSON object")
        return kind, header, self._exactly(payload_len)


class Buffers:
    """Payload memory reused from one answer to the next (of one range): a fresh buffer of many MiB costs the
    kernel a page fault and zeroing per page, as much again as reading into it. A buffer comes back once nothing
    refers to its values any more; up to ``keep_bytes`` of them are kept."""

    _SMALLEST = 1 << 20

    def __init__(self, keep_bytes: int = 256 << 20) -> None:
        self._free: list[np.ndarray[Any, Any]] = []
        self._lock = threading.Lock()  # NOTE: a buffer comes back in whichever thread drops its last value
        self._keep = keep_bytes

    def take(self, n: int) -> memoryview:
        """``n`` writable bytes (a memoryview of a ``uint8`` array)."""
        with self._lock:
            found = next((i for i, b in enumerate(self._free) if n <= b.nbytes <= 2 * n), None)
            store = self._free.pop(found) if found is not None else None
        if store is None:
            store = np.empty(n, dtype=np.uint8)  # NOTE: np.empty, not bytearray: nothing is zeroed in user space
        view = store[:n]
        if self._keep and n >= self._SMALLEST:
            weakref.finalize(view, self._give, store)
        return view.data

    def _give(self, store: np.ndarray[Any, Any]) -> None:
        with self._lock:
            if sum(b.nbytes for b in self._free) + store.nbytes <= self._keep:
                self._free.append(store)


class ServerError(RuntimeError):
    """An ERROR record: the server failed after its answer began."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(json.dumps(body))
        self.body = body


def _events(header: dict[str, Any], payload: bytes | memoryview) -> list[dict[str, Any]]:
    events = header.get("events")
    kind, shape = header.get("type"), header.get("shape")
    if not isinstance(events, list) or not isinstance(shape, list):
        raise FormatError("EVENTS record without events or shape")
    if "strings" in header:
        values: list[Any] | None = list(header["strings"])
    elif payload:
        if kind not in TYPES:
            raise FormatError(f"EVENTS record of unknown type {kind!r}")
        count = int(np.prod(shape, dtype=np.int64))
        array = np.frombuffer(payload, dtype=np.dtype(TYPES[kind]).newbyteorder("<"))
        if array.size != count * len(events):
            raise FormatError(f"EVENTS record: {array.size} values for {len(events)} events of shape {shape}")
        array = array.reshape(len(events), count)
        values = list(array[:, 0]) if shape == [1] else list(array)
    else:
        values = None
    if values is not None:
        if len(values) != len(events):
            raise FormatError(f"EVENTS record: {len(values)} values for {len(events)} events")
        for event, value in zip(events, values):
            event["value"] = value
    return events
