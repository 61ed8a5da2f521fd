"""The CBOR tags of Stream V2 (eiger.md §5): multi-dimensional arrays (40), typed arrays (64-87) and the DECTRIS
compressed byte string (56500), kept as small records so that image bytes are never decompressed or converted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cbor2

log = logging.getLogger(__name__)

__all__ = ["Compressed", "MultiDimArray", "TypedArray", "convert"]

TAG_MULTIDIM = 40
TAG_MULTIDIM_COLUMN_MAJOR = 1040
TAG_COMPRESSED = 56500

# RFC 8746 §2: tag 64 + (float << 4) + (signed << 3) + (little endian << 2) + log2(size); 76 (i8 LE) is not defined
_KINDS = {False: "u", True: "i"}
_ARRAYS = (list, tuple)
_BYTES = (bytes, memoryview)


def _typed_dtype(tag: int) -> str | None:
    """The numpy dtype text of typed-array tag ``tag`` (64-87), or None if it is not one."""
    if not 64 <= tag <= 87 or tag == 76:
        return None
    bits = tag - 64
    little, size = bool(bits & 4), bits & 3
    if bits & 16:  # floats: f16, f32, f64, f128
        return ("<" if little else ">") + f"f{2 << size}"
    if size == 0:  # one-byte ints have no byte order; 64 and 68 are both u8
        return "|i1" if bits & 8 else "|u1"
    return ("<" if little else ">") + f"{_KINDS[bool(bits & 8)]}{1 << size}"


@dataclass(frozen=True)
class Compressed:
    """Tag 56500: ``[algorithm, element size, bytes]``; the bytes are in HDF5-filter framing."""

    algorithm: str
    element_size: int
    data: bytes | memoryview


@dataclass(frozen=True)
class TypedArray:
    """A typed array (tags 64-87): its element type and its contents, raw bytes or a ``Compressed``."""

    tag: int
    dtype: str
    data: bytes | memoryview | Compressed


@dataclass(frozen=True)
class MultiDimArray:
    """Tag 40 (row-major) or 1040 (column-major): ``dims`` slowest first for 40, and the contents."""

    dims: list[int]
    contents: Any  # usually a TypedArray
    row_major: bool = True


def convert(tag: int, value: Any) -> Any:
    """The record for tag ``tag`` around ``value``; ``cbor2.CBORTag`` for a tag Stream V2 does not use."""
    if tag in (TAG_MULTIDIM, TAG_MULTIDIM_COLUMN_MAJOR):
        if not (isinstance(value, _ARRAYS) and len(value) == 2 and isinstance(value[0], _ARRAYS)
                and all(isinstance(d, int) and d >= 0 for d in value[0])):
            raise ValueError(f"tag {tag} needs [dims, contents], got {value!r:.80}")
        return MultiDimArray(list(value[0]), value[1], tag == TAG_MULTIDIM)
    if tag == TAG_COMPRESSED:
        if not (isinstance(value, _ARRAYS) and len(value) == 3 and isinstance(value[0], str)
                and isinstance(value[1], int) and isinstance(value[2], _BYTES)):
            raise ValueError("tag 56500 needs [algorithm, element size, bytes]")
        return Compressed(value[0], value[1], value[2])
    dtype = _typed_dtype(tag)
    if dtype is not None:
        if not isinstance(value, (*_BYTES, Compressed)):
            raise ValueError(f"typed array tag {tag} needs a byte string, got {type(value).__name__}")
        return TypedArray(tag, dtype, value)
    return cbor2.CBORTag(tag, value)  # NOTE: the decoder says what it cannot use
