"""A small CBOR reader (RFC 8949) that returns byte strings as ``memoryview`` slices of the message: zero-copy.

# NOTE: cbor2 copies every byte string into a new ``bytes``, i.e. each 2-8 MiB image once more per frame (about
as much CPU as the rest of the source); Stream V2 maps are small apart from their byte strings, so walking them in
Python costs microseconds. Tags go through ``cbor_tags.convert``; date-time text (tag 0) stays text, epoch
times (tag 1) become ISO text; other tags stay ``cbor2.CBORTag``.
"""
from __future__ import annotations

import logging
import struct
from datetime import datetime, timezone
from typing import Any

import cbor2

from hidra_eiger.cbor_tags import convert

log = logging.getLogger(__name__)

__all__ = ["loads"]

_BREAK = object()
_FLOATS = {25: (">e", 2), 26: (">f", 4), 27: (">d", 8)}
_SIMPLE = {20: False, 21: True, 22: None, 23: None}


def loads(data: Any) -> Any:
    """Decode one CBOR item that fills ``data``; ``ValueError`` names what is wrong."""
    buf = memoryview(data).cast("B")
    try:
        value, pos = _item(buf, 0)
    except (IndexError, RecursionError, struct.error) as exc:
        raise ValueError(f"truncated or too deeply nested CBOR ({type(exc).__name__})") from None
    if value is _BREAK:
        raise ValueError("CBOR break code outside an indefinite-length item")
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} bytes after the CBOR item")
    return value


def _head(buf: memoryview, pos: int) -> tuple[int, int, int | None, int]:
    """``(major type, additional info, argument or None if indefinite, position after the head)``."""
    byte = buf[pos]
    major, info = byte >> 5, byte & 31
    if info < 24:
        return major, info, info, pos + 1
    if info <= 27:
        size = 1 << (info - 24)
        if pos + 1 + size > len(buf):
            raise IndexError
        return major, info, int.from_bytes(buf[pos + 1:pos + 1 + size], "big"), pos + 1 + size
    if info == 31 and major in (2, 3, 4, 5, 7):
        return major, info, None, pos + 1
    raise ValueError(f"reserved additional information {info} at byte {pos}")


def _chunks(buf: memoryview, pos: int, major: int) -> tuple[bytes, int]:
    """An indefinite-length byte or text string: its chunks joined (a copy; detectors send definite ones)."""
    out: list[bytes] = []
    while True:
        value, pos = _item(buf, pos)
        if value is _BREAK:
            return b"".join(out), pos
        if not isinstance(value, (memoryview, str)) or (major == 3) != isinstance(value, str):
            raise ValueError("an indefinite-length string holds a chunk of another type")
        out.append(value.encode() if isinstance(value, str) else bytes(value))


def _string(buf: memoryview, pos: int, major: int, arg: int | None) -> tuple[Any, int]:
    if arg is None:
        joined, pos = _chunks(buf, pos, major)
        return (joined.decode() if major == 3 else memoryview(joined)), pos
    if pos + arg > len(buf):
        raise IndexError
    view = buf[pos:pos + arg]
    return (str(view, "utf-8") if major == 3 else view), pos + arg


def _array(buf: memoryview, pos: int, arg: int | None) -> tuple[list[Any], int]:
    out: list[Any] = []
    while arg is None or len(out) < arg:
        value, pos = _item(buf, pos)
        if value is _BREAK:
            if arg is None:
                return out, pos
            raise ValueError("break code inside a definite-length array")
        out.append(value)
    return out, pos


def _map(buf: memoryview, pos: int, arg: int | None) -> tuple[dict[Any, Any], int]:
    items, pos = _array(buf, pos, None if arg is None else 2 * arg)
    if len(items) % 2:
        raise ValueError("a map with a key but no value")
    keys = [bytes(k) if isinstance(k, memoryview) else tuple(k) if isinstance(k, list) else k for k in items[::2]]
    try:
        return dict(zip(keys, items[1::2])), pos
    except TypeError:  # NOTE: a map or a nested array as a key: valid CBOR, but no Python dict key
        raise ValueError("a map key that is a map or a nested array") from None


def _tag(tag: int, value: Any) -> Any:
    if tag == 0 and isinstance(value, str):
        return value  # NOTE: already ISO 8601 text, which is what the events carry
    if tag == 1 and isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, timezone.utc).isoformat()
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"tag 1 epoch time {value!r} is out of range") from None
    return convert(tag, value)


def _simple(buf: memoryview, info: int, arg: int | None, pos: int) -> Any:
    if arg is None:
        return _BREAK
    if info in _FLOATS:
        fmt, size = _FLOATS[info]
        return struct.unpack(fmt, buf[pos - size:pos])[0]
    if arg in _SIMPLE:
        return _SIMPLE[arg]
    return cbor2.CBORSimpleValue(arg)


def _item(buf: memoryview, pos: int) -> tuple[Any, int]:
    major, info, arg, pos = _head(buf, pos)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos  # type: ignore[operator]
    if major in (2, 3):
        return _string(buf, pos, major, arg)
    if major == 4:
        return _array(buf, pos, arg)
    if major == 5:
        return _map(buf, pos, arg)
    if major == 6:
        value, pos = _item(buf, pos)
        return _tag(arg, value), pos  # type: ignore[arg-type]
    return _simple(buf, info, arg, pos), pos
