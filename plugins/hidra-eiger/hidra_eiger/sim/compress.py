"""Real compression of frames as a DCU sends them: raw LZ4 blocks, bitshuffle-LZ4, and the HDF5-filter framings."""
from __future__ import annotations

import logging
import struct

import bitshuffle
import lz4.block
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["BSHUF_TARGET_BLOCK_BYTES", "bslz4", "bslz4_hdf5", "lz4_block", "lz4_hdf5"]

# NOTE: bitshuffle's own default block: 8 KiB of data, a multiple of 8 elements; we pass it explicitly so that the
# 12-byte header can state it.
BSHUF_TARGET_BLOCK_BYTES = 8192


def _bs_block_elements(itemsize: int) -> int:
    return max(8, (BSHUF_TARGET_BLOCK_BYTES // itemsize) // 8 * 8)


def lz4_block(frame: np.ndarray) -> bytes:
    """One raw LZ4 block without a size prefix (Stream V1 ``lz4<``)."""
    return lz4.block.compress(np.ascontiguousarray(frame).tobytes(), store_size=False)


def bslz4(frame: np.ndarray) -> bytes:
    """Bitshuffle + LZ4 blocks without the 12-byte header (Stream V1 ``bs<bits>-lz4<`` as simulators send it)."""
    data = np.ascontiguousarray(frame).reshape(-1)
    return bitshuffle.compress_lz4(data, _bs_block_elements(data.itemsize)).tobytes()


def bslz4_hdf5(frame: np.ndarray) -> bytes:
    """Bitshuffle + LZ4 in HDF5-filter framing: BE uint64 byte count, BE uint32 block size in bytes, blocks."""
    itemsize = frame.dtype.itemsize
    return struct.pack(">QI", frame.nbytes, _bs_block_elements(itemsize) * itemsize) + bslz4(frame)


def lz4_hdf5(frame: np.ndarray) -> bytes:
    """LZ4 in HDF5-filter framing (filter 32004): header, then per block a BE uint32 size and the block.

    One block holds the whole frame; a block that does not shrink is stored raw with its size equal to the block
    size, which is how the filter tells the two apart.
    """
    raw = np.ascontiguousarray(frame).tobytes()
    block = lz4.block.compress(raw, store_size=False)
    if len(block) >= len(raw):
        block = raw
    return struct.pack(">QII", len(raw), len(raw), len(block)) + block
