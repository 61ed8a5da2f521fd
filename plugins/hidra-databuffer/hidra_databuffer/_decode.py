"""Values of bsread channels as the data buffer stores and serves them: checked cheaply when stored, decoded when
queried. The decoding itself is ``values.py``'s (the one code path for bsread value frames); this module adds
what the store needs on top: a hashable per-pulse channel config and the data-API's JSON form (§8).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from hidra_databuffer.values import COMPRESSIONS, ENCODINGS, TYPES, ChannelSpec, decode_value

__all__ = ["COMPRESSIONS", "ENCODINGS", "TYPES", "BadValue", "ChannelConfig", "check_size", "decode",
           "json_value", "raw_size", "value_json"]

_STRUCT = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
           "uint64": "Q", "float32": "f", "float64": "d", "bool": "?"}


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
    def spec(self) -> ChannelSpec:
        return ChannelSpec("", self.type, self.shape, self.encoding, self.compression)

    @cached_property
    def count(self) -> int:
        """Elements of one value (the product of the shape)."""
        return math.prod(self.shape)

    @cached_property
    def scalar(self) -> struct.Struct | None:
        """How to read an uncompressed scalar number directly (a query of many scalars is mostly this)."""
        if self.shape != (1,) or self.compression != "none" or self.type not in _STRUCT:
            return None
        return struct.Struct(("<" if self.encoding == "little" else ">") + _STRUCT[self.type])


def raw_size(config: ChannelConfig, stored: int) -> int:
    """Bytes of one decoded value: exact for numbers, the stored size for strings (a query-size estimate)."""
    return stored if config.type == "string" else config.count * config.spec.dtype.itemsize


def check_size(config: ChannelConfig, frame: memoryview) -> None:
    """Refuse a frame whose (stated) size does not fit its type and shape; cheap, no decompression."""
    problem = config.spec.check(frame) if frame.nbytes else None
    if problem is not None:
        raise BadValue(problem)


def decode(config: ChannelConfig, frame: memoryview) -> np.ndarray[Any, Any] | str:
    """The value: a flat array, or a string."""
    try:
        value = decode_value(config.spec, frame)
    except ValueError as exc:
        raise BadValue(str(exc)) from None
    if value is None or isinstance(value, str):
        return value or ""
    return np.asarray(value).reshape(-1)


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
