"""What the Stream V1 and V2 decoders make of one detector message, independent of the format on the wire."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Blob", "ChannelFrame", "DecodeError", "End", "Header", "Image", "Message"]

#: a zero-copy view of received bytes (``zmq.Frame.buffer``) or bytes made at decode time
Buffer = bytes | memoryview


class DecodeError(ValueError):
    """A message the source drops; ``kind`` is its ``stats`` counter (``malformed``, ``unknown_encoding``).

    ``series_id``/``image_id`` are set when the broken message still said which image it was, so that the source
    does not count it as a gap as well.
    """

    def __init__(self, kind: str, text: str, series_id: int | None = None, image_id: int | None = None) -> None:
        super().__init__(text)
        self.kind = kind
        self.series_id = series_id
        self.image_id = image_id


@dataclass(frozen=True)
class Blob:
    """An array of the series header (flatfield, pixel mask, count-rate table) with its numpy description."""

    name: str
    dtype: str
    shape: list[int]
    data: Buffer


@dataclass(frozen=True)
class Header:
    """``dheader-1.0`` (V1) or ``start`` (V2)."""

    format: str  # "v1" / "v2"
    series_id: int
    unique_id: str | None
    header_detail: str | None
    config: dict[str, Any]
    channels: list[str]
    blobs: list[Blob] = field(default_factory=list)
    user_data: Any = None


@dataclass(frozen=True)
class ChannelFrame:
    """One channel's image exactly as the detector sent it."""

    channel: str
    payload: Buffer
    shape: list[int]  # numpy order [y, x]
    dtype: str  # numpy text with byte order, e.g. "<u2"
    compression: str  # "none" / "lz4" / "bslz4"
    hdf5_framed: bool
    encoding: str


@dataclass(frozen=True)
class Image:
    """``dimage-1.0`` (V1, one channel ``data``) or ``image`` (V2, one or more channels)."""

    series_id: int
    unique_id: str | None
    image_id: int
    frames: list[ChannelFrame]
    times: dict[str, Any]  # start_time / stop_time / real_time where sent
    user_data: Any = None
    md5: str = ""


@dataclass(frozen=True)
class End:
    """``dseries_end-1.0`` (V1) or ``end`` (V2)."""

    series_id: int
    unique_id: str | None


Message = Header | Image | End
