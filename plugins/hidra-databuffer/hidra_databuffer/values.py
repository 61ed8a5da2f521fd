"""bsread channel values: what a channel's description says (``ChannelSpec``) and its value frames decoded.

A value frame holds the channel's raw bytes in its byte order, or their ``lz4`` or ``bitshuffle_lz4`` form
(databuffer.md §10). ``decode_value`` turns one frame (or the slice of a pulse's payload that a pulse event's
channel entry points at) into the value: a numpy scalar for shape ``[1]``, an array of shape ``shape[::-1]``
otherwise (bsread lists the fastest dimension first), ``str`` for strings and ``None`` for an empty frame. Values
come back in native byte order; uncompressed arrays of native order are read-only views of the frame (no copy).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["COMPRESSIONS", "ENCODINGS", "TYPES", "ChannelSpec", "Value", "decode_pulse", "decode_value", "decompress",
           "stated_sizes"]

#: bsread type -> numpy type code (strings are UTF-8 bytes)
TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
         "int64": "i8", "uint64": "u8", "float32": "f4", "float64": "f8", "bool": "?", "string": "u1"}
COMPRESSIONS = ("none", "lz4", "bitshuffle_lz4")
ENCODINGS = ("little", "big")

Value = np.ndarray | np.generic | str | None

_LZ4_HEAD, _BSLZ4_HEAD = 4, 12


def _word(entry: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...] | Mapping[str, str]) -> str:
    raw = entry.get(key)
    value = default if raw is None else raw
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"{key} {raw!r} is not one of {', '.join(allowed)}")
    return value.lower()


@dataclass(frozen=True)
class ChannelSpec:
    """One channel of a bsread data header, checked, with the bsread defaults filled in."""

    name: str
    type: str = "float64"
    shape: tuple[int, ...] = (1,)
    encoding: str = "little"
    compression: str = "none"

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> ChannelSpec:
        """From a data-header channel (or a pulse event's channel entry); ``ValueError`` names what is wrong."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"a channel must be a JSON object, got {type(entry).__name__}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"channel name {name!r} is not a non-empty string")
        try:
            shape = entry.get("shape")
            shape = [1] if shape is None else shape
            if not isinstance(shape, list) or not shape or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
                raise ValueError(f"shape {shape!r} is not a list of positive integers")
            return cls(name, _word(entry, "type", "float64", TYPES), tuple(shape),
                       _word(entry, "encoding", "little", ENCODINGS),
                       _word(entry, "compression", "none", COMPRESSIONS))
        except ValueError as exc:
            raise ValueError(f"channel {name!r}: {exc}") from None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(TYPES[self.type]).newbyteorder("<" if self.encoding == "little" else ">")

    @property
    def nbytes(self) -> int | None:
        """Bytes of one uncompressed value; ``None`` for strings (any length)."""
        return None if self.type == "string" else math.prod(self.shape) * self.dtype.itemsize

    def entry(self) -> dict[str, Any]:
        """The description as a pulse event's channel entry carries it."""
        return {"name": self.name, "type": self.type, "shape": list(self.shape), "encoding": self.encoding,
                "compression": self.compression}

    def check(self, frame: memoryview) -> str | None:
        """Why a non-empty value frame cannot hold a value of this channel, or ``None`` if it can (a compressed
        frame is judged by the uncompressed size its header states; its body is not decompressed)."""
        size = frame.nbytes
        if self.compression != "none" and size <= (_LZ4_HEAD if self.compression == "lz4" else _BSLZ4_HEAD):
            return f"{size} bytes is too short for a {self.compression} frame"
        if self.compression == "bitshuffle_lz4":
            (block,) = struct.unpack_from(">i", frame, 8)
            if block < 0 or block % self.dtype.itemsize:
                return f"bitshuffle block size {block} is not a multiple of the item size {self.dtype.itemsize}"
        want = self.nbytes
        stated = stated_sizes(self, frame)
        if want is not None and want not in stated:
            what = "holds" if self.compression == "none" else "states"
            return (f"the frame {what} {stated[0]} uncompressed bytes; {self.type} of shape {list(self.shape)} "
                    f"needs {want}")
        return None


def stated_sizes(spec: ChannelSpec, frame: memoryview) -> tuple[int, ...]:
    """The uncompressed byte counts a non-empty value frame may mean, the likeliest first.

    # NOTE: the lz4 size prefix is little-endian (the Python sender), but Java senders write it in the channel's
    byte order, which the Python receiver expects: for a big-endian channel both readings are candidates.
    """
    if spec.compression == "none":
        return (frame.nbytes,)
    if spec.compression == "bitshuffle_lz4":
        return (struct.unpack_from(">q", frame)[0],)
    (little,) = struct.unpack_from("<I", frame)
    (big,) = struct.unpack_from(">I", frame)
    return (little, big) if spec.encoding == "big" and big != little else (little,)


def _raw(spec: ChannelSpec, frame: memoryview) -> Any:
    """The uncompressed bytes of a non-empty frame (the frame itself when not compressed)."""
    if spec.compression == "none":
        return frame
    if spec.compression == "bitshuffle_lz4":
        import bitshuffle  # NOTE: here, so that readers of uncompressed data need no OpenMP runtime

        count = stated_sizes(spec, frame)[0]
        (block,) = struct.unpack_from(">i", frame, 8)
        body = np.frombuffer(frame, np.uint8, offset=_BSLZ4_HEAD)
        item = spec.dtype.itemsize
        return bitshuffle.decompress_lz4(body, (count // item,), spec.dtype, block // item).view(np.uint8)
    import lz4.block

    sizes = stated_sizes(spec, frame)
    candidates = [n for n in sizes if n == spec.nbytes] or list(sizes)
    for n in candidates[:-1]:
        try:
            return lz4.block.decompress(frame[_LZ4_HEAD:], uncompressed_size=n)
        except lz4.block.LZ4BlockError:
            continue
    return lz4.block.decompress(frame[_LZ4_HEAD:], uncompressed_size=candidates[-1])


def decompress(spec: ChannelSpec, data: Any) -> Any:
    """The uncompressed bytes of a value frame (the frame itself when not compressed, or empty); ``ValueError`` if
    it cannot hold a value of ``spec``, or does not decompress."""
    frame = memoryview(data).cast("B")
    if not frame.nbytes:
        return frame
    problem = spec.check(frame)
    if problem is not None:
        raise ValueError(f"channel {spec.name!r}: {problem}")
    try:
        return _raw(spec, frame)
    except Exception as exc:  # NOTE: lz4 and bitshuffle raise their own types for corrupt data
        raise ValueError(f"channel {spec.name!r}: {spec.compression} data does not decompress: {exc}") from None


def decode_value(channel: Mapping[str, Any] | ChannelSpec, data: Any) -> Value:
    """The value of one channel from its value frame (``bytes``, ``memoryview``, any buffer); ``None`` if empty.

    ``channel`` is a data-header channel, a pulse event's channel entry or a ``ChannelSpec``. ``ValueError`` if
    the frame cannot hold a value of that channel, or does not decompress.
    """
    spec = channel if isinstance(channel, ChannelSpec) else ChannelSpec.from_entry(channel)
    raw = decompress(spec, data)
    if not memoryview(raw).nbytes:
        return None
    if spec.type == "string":
        # NOTE: replace, not fail: a query must still serve the other values of a channel with one bad string
        return bytes(raw).decode("utf-8", errors="replace")
    array = np.frombuffer(raw, dtype=spec.dtype)
    if array.nbytes != spec.nbytes:
        raise ValueError(f"channel {spec.name!r}: {array.nbytes} bytes after decompression, needs {spec.nbytes}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array[0] if spec.shape == (1,) else array.reshape(spec.shape[::-1])


def decode_pulse(metadata: Mapping[str, Any], payload: Any) -> dict[str, Value]:
    """Every channel's value of a pulse event (its ``metadata`` and ``payload``), by channel name."""
    buf = memoryview(payload).cast("B")
    out: dict[str, Value] = {}
    for entry in metadata["channels"]:
        start, size = entry["offset"], entry["size"]
        out[entry["name"]] = decode_value(entry, buf[start:start + size]) if entry["present"] else None
    return out
