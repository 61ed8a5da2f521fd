"""The CBOR tags of Stream V2 (eiger.md §5): multi-dimensional arrays (40), typed arrays (64-87) and the DECTRIS
compressed byte string (56500), kept as small records so that image bytes are never decompressed or converted.

# NOTE: cbor2 5.x calls ``tag_hook(decoder, tag, shareable_index=None)``, cbor2 6.x ``tag_hook(tag, immutable)``
(the two DECTRIS examples differ for the same reason); ``tag_hook`` accepts both. Tag 0 (date-time text) is
decoded by cbor2 itself, to a ``datetime``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cbor2

log = logging.getLogger(__name__)

__all__ = ["Compressed", "MultiDimArray", "TypedArray", "decode", "tag_hook"]

TAG_MULTIDIM = 40
TAG_MULTIDIM_COLUMN_MAJOR = 1040
TAG_COMPRESSED = 56500

# RFC 8746 §2: tag 64 + (float << 4) + (signed << 3) + (little endian << 2) + log2(size); 76 (i8 LE) is not defined
_KINDS = {False: "u", True: "i"}
# NOTE: cbor2 6.x decodes an array inside a tag as a tuple when it may be used as a map key ("immutable")
_ARRAYS = (list, tuple)


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
    data: bytes


@dataclass(frozen=True)
class TypedArray:
    """A typed array (tags 64-87): its element type and its contents, raw bytes or a ``Compressed``."""

    tag: int
    dtype: str
    data: bytes | Compressed


@dataclass(frozen=True)
class MultiDimArray:
    """Tag 40 (row-major) or 1040 (column-major): ``dims`` slowest first for 40, and the contents."""

    dims: list[int]
    contents: Any  # usually a TypedArray
    row_major: bool = True


def _convert(tag: cbor2.CBORTag) -> Any:
    value = tag.value
    if tag.tag in (TAG_MULTIDIM, TAG_MULTIDIM_COLUMN_MAJOR):
        if not (isinstance(value, _ARRAYS) and len(value) == 2 and isinstance(value[0], _ARRAYS)):
            raise ValueError(f"tag {tag.tag} needs [dims, contents], got {type(value).__name__}")
        return MultiDimArray([int(d) for d in value[0]], value[1], tag.tag == TAG_MULTIDIM)
    if tag.tag == TAG_COMPRESSED:
        if not (isinstance(value, _ARRAYS) and len(value) == 3 and isinstance(value[0], str)
                and isinstance(value[1], int) and isinstance(value[2], bytes)):
            raise ValueError("tag 56500 needs [algorithm, element size, bytes]")
        return Compressed(value[0], value[1], value[2])
    dtype = _typed_dtype(tag.tag)
    if dtype is not None:
        if not isinstance(value, (bytes, Compressed)):
            raise ValueError(f"typed array tag {tag.tag} needs a byte string, got {type(value).__name__}")
        return TypedArray(tag.tag, dtype, value)
    return tag  # NOTE: unknown tags stay CBORTag; the decoder says what it cannot use


def tag_hook(*args: Any) -> Any:
    """A cbor2 ``tag_hook`` for both signatures: ``(decoder, tag, ...)`` (5.x) and ``(tag, immutable)`` (6.x)."""
    tag = next(a for a in args[:2] if isinstance(a, cbor2.CBORTag))
    return _convert(tag)


def decode(data: Any) -> Any:
    """``cbor2.loads`` with the Stream V2 tags. Byte strings come back as ``bytes`` (cbor2 copies them once)."""
    return cbor2.loads(data, tag_hook=tag_hook)
