"""One armed series: the configuration snapshot taken at ``arm`` and its frames, compressed once and cached."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from typing import Any, Callable

import numpy as np

from hidra_eiger.sim import compress
from hidra_eiger.sim.frames import FrameGenerator

log = logging.getLogger(__name__)

__all__ = ["Series", "v1_encoding"]


def v1_encoding(compression: str, bits: int) -> str:
    """The Stream V1 ``encoding`` string: ``<``, ``lz4<`` or ``bs<bits>-lz4<`` (the DCU sends little-endian)."""
    return {"none": "<", "lz4": "lz4<", "bslz4": f"bs{bits}-lz4<"}[compression]


@dataclass
class Series:
    series_id: int
    unique_id: int
    stream_format: str  # "legacy" (V1) or "cbor" (V2)
    header_detail: str
    detector: dict[str, Any]  # detector config values at arm
    header_appendix: str
    image_appendix: str
    bitshuffle_header: bool
    channels: list[str]
    generator: FrameGenerator
    arm_date: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def nimages_total(self) -> int:
        return int(self.detector["nimages"]) * int(self.detector["ntrigger"])

    @property
    def compression(self) -> str:
        return str(self.detector["compression"])

    @cached_property
    def encode(self) -> Callable[[int, int], bytes]:
        """``encode(index, channel)``: the blob of one frame as this series sends it (V1 or V2 framing)."""
        if self.stream_format == "cbor":
            # NOTE: tag 56500 payloads are always in HDF5-filter framing (DECTRIS compression tag)
            fn = {"none": _raw, "lz4": compress.lz4_hdf5, "bslz4": compress.bslz4_hdf5}[self.compression]
        elif self.compression == "bslz4":
            fn = compress.bslz4_hdf5 if self.bitshuffle_header else compress.bslz4
        else:
            fn = {"none": _raw, "lz4": compress.lz4_block}[self.compression]
        generator = self.generator

        @lru_cache(maxsize=2 * generator.distinct * max(1, len(self.channels)))
        def _cached(slot: int, channel: int) -> bytes:
            return fn(generator.frame(slot, channel))

        def _encode(index: int, channel: int = 0) -> bytes:
            return _cached(index % generator.distinct, channel)

        return _encode

    @cached_property
    def md5(self) -> Callable[[int, int], str]:
        """``md5(index, channel)``: the V1 ``hash`` of a frame's blob, computed once per distinct frame.

        # NOTE: hashing every sent frame cost the simulator ~2 ms per 4M frame, more than sending it"""
        encode, distinct = self.encode, self.generator.distinct

        @lru_cache(maxsize=2 * distinct * max(1, len(self.channels)))
        def _cached(slot: int, channel: int) -> str:
            return hashlib.md5(encode(slot, channel)).hexdigest()

        def _md5(index: int, channel: int = 0) -> str:
            return _cached(index % distinct, channel)

        return _md5

    def warm(self) -> None:
        """Encode every distinct frame now, so that the series streams at its rate from the first image on."""
        for index in range(min(self.nimages_total, self.generator.distinct)):
            for channel in range(len(self.channels)):
                self.encode(index, channel)
                if self.stream_format != "cbor":
                    self.md5(index, channel)

    def times_ns(self, index: int) -> tuple[int, int, int]:
        """(start, stop, real) exposure times of image ``index`` in ns since the series start."""
        frame_ns = round(float(self.detector["frame_time"]) * 1e9)
        count_ns = round(float(self.detector["count_time"]) * 1e9)
        return index * frame_ns, index * frame_ns + count_ns, count_ns


def _raw(frame: np.ndarray) -> bytes:
    return np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<")).tobytes()
