"""Values of bsread channels as stored by the data buffer: checked cheaply when stored, decoded when queried.

A stored event is the value frame as the stream sent it (databuffer.md §10): raw bytes in the channel's byte
order, or ``lz4`` (4-byte uncompressed size, then one LZ4 block) or ``bitshuffle_lz4`` (8-byte big-endian size,
4-byte big-endian block size in bytes, then the bitshuffle-LZ4 blocks of the HDF5 filter).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["COMPRESSIONS", "ENCODINGS", "TYPES", "BadValue", "ChannelConfig", "check_size", "decode",
           "json_value", "raw_size", "value_json"]

#: bsread channel type -> numpy type code (without byte order)
TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
         "int64": "i8", "uint64": "u8", "float32": "f4", "float64": "f8", "bool": "?", "string": "u1"}
ENCODINGS = {"little": "<", "big": ">"}
_STRUCT = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
           "uint64": "Q", "float32": "f", "float64": "d", "bool": "?"}
COMPRESSIONS = frozenset({"none", "lz4", "bitshuffle_lz4"})


class BadValue(ValueError):
    """A value frame that does not match its channel's config."""


@dataclass(frozen=True)
class ChannelConfig:
    """A channel's config as of some pulse: what the data header said about it."""

    type: str
    shape: tuple[int, ...]
    encoding: str
    compression: str

    @cached_property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(ENCODINGS[self.encoding] + TYPES[self.type])

    @cached_property
    def count(self) -> int:
        """Elements of one value (the product of the shape)."""
        return math.prod(self.shape)

    @cached_property
    def scalar(self) -> struct.Struct | None:
        """How to read an uncompressed scalar number directly (a query of many scalars is mostly this)."""
        if self.shape != (1,) or self.compression != "none" or self.type not in _STRUCT:
            return None
        return struct.Struct(ENCODINGS[self.encoding] + _STRUCT[self.type])


def raw_size(config: ChannelConfig, stored: int) -> int:
    """Bytes of one decoded value: exact for numbers, the stored size for strings (a query-size estimate)."""
    return stored if config.type == "string" else config.count * config.dtype.itemsize


def _declared_size(config: ChannelConfig, frame: memoryview) -> int:
    if config.compression == "lz4":
        if len(frame) < 4:
            raise BadValue(f"lz4 frame of {len(frame)} bytes has no size header")
        little, big = struct.unpack("<I", frame[:4])[0], struct.unpack(">I", frame[:4])[0]
        # NOTE: databuffer.md §10 says little-endian; bsread's own reader takes the channel's byte order, so a
        # big-endian sender may have written either: the one that fits the shape wins
        if config.type != "string" and big == config.count * config.dtype.itemsize != little:
            return int(big)
        return int(little)
    if len(frame) < 12:
        raise BadValue(f"bitshuffle_lz4 frame of {len(frame)} bytes has no 12-byte header")
    return int(struct.unpack(">q", frame[:8])[0])


def check_size(config: ChannelConfig, frame: memoryview) -> None:
    """Refuse a frame whose (declared) size does not fit its type and shape; cheap, no decompression."""
    size = len(frame) if config.compression == "none" else _declared_size(config, frame)
    if config.type == "string":
        return
    want = config.count * config.dtype.itemsize
    if size != want:
        raise BadValue(f"{size} bytes for {config.type} shape {list(config.shape)} (expected {want})")


def decode(config: ChannelConfig, frame: memoryview) -> np.ndarray[Any, Any] | str:
    """The value: a flat array in the channel's byte order, or a string."""
    dtype = np.dtype("u1") if config.type == "string" else config.dtype
    data: Any = frame
    if config.compression == "lz4":
        import lz4.block  # NOTE: imported when first needed, so storing never pays for it

        size = _declared_size(config, frame)
        data = lz4.block.decompress(frame[4:], uncompressed_size=size) if size else b""
    elif config.compression == "bitshuffle_lz4":
        import bitshuffle

        size = _declared_size(config, frame)
        block = struct.unpack(">i", frame[8:12])[0] // dtype.itemsize
        body = np.frombuffer(frame[12:], dtype=np.uint8)
        data = bitshuffle.decompress_lz4(body, (size // dtype.itemsize,), dtype, block) if size else b""
    if config.type == "string":
        return bytes(data).decode("utf-8", errors="replace")
    array = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=dtype)
    if array.size != config.count:
        raise BadValue(f"{array.size} values for {config.type} shape {list(config.shape)}")
    return array


def json_value(config: ChannelConfig, value: np.ndarray[Any, Any] | str) -> Any:
    """The data-API form (§8): a number for a scalar, a flat list for arrays and images, a string."""
    if isinstance(value, str):
        return value
    if config.shape == (1,):
        return value[0].item()
    return value.tolist()


def value_json(config: ChannelConfig, blob: bytes, offset: int, size: int) -> Any:
    """``json_value`` of the frame at ``blob[offset:offset + size]``."""
    if config.scalar is not None and size == config.scalar.size:
        return config.scalar.unpack_from(blob, offset)[0]
    return json_value(config, decode(config, memoryview(blob)[offset:offset + size]))
