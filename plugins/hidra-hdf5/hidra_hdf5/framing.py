"""What a frame's metadata says about its payload, and the HDF5 filter framing a chunk of it needs.

A frame is stored as it came (a direct chunk write), never decompressed: only the framing that the HDF5
bitshuffle (32008) or LZ4 (32004) filter expects in front of the compressed bytes is added where the detector
left it out (Stream V1 sends headerless bitshuffle-LZ4 and bare LZ4 blocks).
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import hdf5plugin
import numpy as np

from hidra_core import HidraError

__all__ = ["BSHUF_TARGET_BLOCK_BYTES", "COMPRESSIONS", "FrameSpec", "SeriesRefused", "chunk_of", "filter_options",
           "frame_spec"]

log = logging.getLogger(__name__)

COMPRESSIONS = ("none", "lz4", "bslz4")
#: bitshuffle's default block: 8 KiB of data in a multiple of 8 elements (bshuf_default_block_size)
BSHUF_TARGET_BLOCK_BYTES = 8192
_MIN_BLOCK_ELEMENTS = 128


class SeriesRefused(HidraError):
    """A series message the ``hdf5`` writer cannot store: bad metadata, no series for a frame, a clash."""


@dataclass(frozen=True)
class FrameSpec:
    """One frame's place and form: image index, channel position, numpy shape and dtype, compression."""

    image_id: int
    channel_index: int
    shape: tuple[int, int]
    dtype: np.dtype
    compression: str
    hdf5_framed: bool

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize


def _int(meta: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SeriesRefused(f"frame metadata {key!r} must be a non-negative integer, got {value!r}")
    return value


def _dtype(meta: Mapping[str, Any]) -> np.dtype:
    text = meta.get("dtype")
    try:
        dtype = np.dtype(text) if isinstance(text, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "uif" or dtype.itemsize not in (1, 2, 4, 8):
        raise SeriesRefused(f"frame metadata 'dtype' {text!r} is not a numeric numpy dtype such as '<u2'")
    size = meta.get("element_size", dtype.itemsize)
    if size != dtype.itemsize:
        raise SeriesRefused(f"frame metadata element_size {size!r} does not match dtype {text!r}")
    return dtype


def frame_spec(meta: Mapping[str, Any]) -> FrameSpec:
    """The frame's facts from its event metadata; ``SeriesRefused`` names the first bad one."""
    shape = meta.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise SeriesRefused(f"frame metadata 'shape' must be [y, x] of positive integers, got {shape!r}")
    compression = meta.get("compression")
    if compression not in COMPRESSIONS:
        raise SeriesRefused(f"frame metadata 'compression' {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    framed = meta.get("hdf5_framed", False)
    if not isinstance(framed, bool):
        raise SeriesRefused(f"frame metadata 'hdf5_framed' must be true or false, got {framed!r}")
    return FrameSpec(_int(meta, "image_id"), _int(meta, "channel_index", 0), (shape[0], shape[1]), _dtype(meta),
                     compression, framed)


def filter_options(compression: str) -> dict[str, Any]:
    """``create_dataset`` keywords for chunks of ``compression`` (none: unfiltered)."""
    if compression == "bslz4":
        return dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    if compression == "lz4":
        return dict(hdf5plugin.LZ4())
    return {}


def _bs_block_bytes(itemsize: int) -> int:
    elements = max(_MIN_BLOCK_ELEMENTS, (BSHUF_TARGET_BLOCK_BYTES // itemsize) // 8 * 8)
    return elements * itemsize


def chunk_of(spec: FrameSpec, payload: Any, scratch: bytearray | None = None) -> Any:
    """The bytes of the frame's chunk: the payload itself, or the payload behind the filter's framing.

    The framed copy is built in ``scratch`` (grown as needed) when given: a fresh buffer per frame cost more in
    allocation and page faults than the copy itself."""
    size = memoryview(payload).nbytes
    if spec.compression == "none":
        if size != spec.nbytes:
            raise SeriesRefused(f"raw frame {spec.image_id} has {size} bytes; shape {list(spec.shape)} of"
                                f" {spec.dtype.str} needs {spec.nbytes}")
        return payload
    if spec.hdf5_framed:
        if size < 12 or struct.unpack_from(">Q", payload)[0] != spec.nbytes:
            raise SeriesRefused(f"frame {spec.image_id} says hdf5_framed but does not begin with its size"
                                f" ({spec.nbytes} bytes) as the HDF5 {spec.compression} filter framing does")
        return payload
    if spec.compression == "bslz4":
        return _framed(struct.pack(">QI", spec.nbytes, _bs_block_bytes(spec.dtype.itemsize)), payload, scratch)
    # NOTE: the LZ4 filter takes a block whose stored size equals its raw size for an uncompressed one: a bare LZ4
    # block of exactly that size cannot be framed without decompressing it, which this writer never does.
    if size == spec.nbytes:
        raise SeriesRefused(f"lz4 frame {spec.image_id}: a bare LZ4 block as large as the raw frame ({size} bytes)"
                            " cannot be told from an uncompressed block in the HDF5 LZ4 filter framing")
    return _framed(struct.pack(">QII", spec.nbytes, spec.nbytes, size), payload, scratch)


def _framed(head: bytes, payload: Any, scratch: bytearray | None) -> Any:
    if scratch is None:
        return head + payload
    size = len(head) + memoryview(payload).nbytes
    if len(scratch) < size:
        scratch.extend(bytes(size - len(scratch)))
    view = memoryview(scratch)
    view[:len(head)] = head
    view[len(head):size] = memoryview(payload).cast("B")
    return view[:size]
