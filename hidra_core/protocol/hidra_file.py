"""Codec for data messages: ``[json(metadata), payload]``, native (``htype`` names the message type) or legacy 4.x.

The native form is a superset of the 4.x metadata (hidra4-protocol.md §6.4): every legacy key keeps its meaning
and ``htype``, ``chunk_count``, ``last_chunk``, ``checksum_algorithm``, ``chunk_checksum`` and (last chunk only)
``file_checksum`` are added; series messages add ``series`` and every message may carry its source's ``metadata``
(a JSON object). Each message type (``hidra_core.types``) has its ``htype``; all share the chunked envelope, so a
4.x client sees a frame as a one-chunk file. A message with an ``htype`` of no known type raises ``UnknownType``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from hidra_core.errors import ProtocolError, shown
from hidra_core.types import FILE, FRAME, PULSE, SERIES_END, SERIES_START, file_id_of

__all__ = ["ALIVE_TEST", "HTYPE", "HTYPES", "DataMessage", "UnknownType", "decode_data", "encode_metadata",
           "is_alive_test"]

HTYPE = "hidra-file-1.0"
#: the ``htype`` of each message type, and back
HTYPES = {FILE: HTYPE, SERIES_START: "hidra-series-start-1.0", FRAME: "hidra-frame-1.0",
          SERIES_END: "hidra-series-end-1.0", PULSE: "hidra-pulse-1.0"}
_KINDS = {htype: kind for kind, htype in HTYPES.items()}
ALIVE_TEST = b"ALIVE_TEST"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_metadata(metadata: Mapping[str, Any]) -> bytes:
    return _dumps(metadata).encode()


def is_alive_test(frames: Sequence[Any]) -> bool:
    return len(frames) == 1 and bytes(frames[0]) == ALIVE_TEST


@dataclass(frozen=True)
class DataMessage:
    """One decoded data chunk. ``payload`` is the frame's buffer, not a copy."""

    metadata: dict[str, Any]
    payload: Any
    relative_path: str
    filename: str
    filesize: int
    chunksize: int
    chunk_number: int
    is_last: bool
    native: bool
    kind: str = FILE
    series: str = ""

    @property
    def file_id(self) -> str:
        return file_id_of(self.relative_path, self.filename)


class UnknownType(ProtocolError):
    """A message whose ``htype`` names no type this version knows (a newer peer): counted and dropped."""


def _int_field(meta: Mapping[str, Any], key: str, minimum: int) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProtocolError(f"field {key!r} must be an integer >= {minimum}, got {shown(value)}")
    return value


def decode_data(frames: Sequence[Any]) -> DataMessage:
    """Decode ``[json(metadata), payload]``; ``ProtocolError`` says what is wrong with it."""
    if len(frames) != 2:
        raise ProtocolError(f"a data message has 2 frames, got {len(frames)}")
    try:
        meta = json.loads(bytes(frames[0]))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # NOTE: RecursionError: nested too deeply
        raise ProtocolError(f"metadata frame is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ProtocolError("metadata frame is not a JSON object")
    htype = meta.get("htype")
    kind = FILE if htype is None else _KINDS.get(htype) if isinstance(htype, str) else None
    if kind is None:
        raise UnknownType(f"unknown message type (htype {shown(htype)}); this receiver knows {sorted(_KINDS)}")
    series = meta.get("series", "")
    if not isinstance(series, str):
        raise ProtocolError(f"field 'series' must be a string, got {shown(series)}")
    if not isinstance(meta.get("metadata", {}), dict):
        raise ProtocolError(f"field 'metadata' must be a JSON object, got {shown(meta['metadata'])}")
    filename = meta.get("filename")
    if not isinstance(filename, str):
        raise ProtocolError(f"field 'filename' must be a string, got {shown(filename)}")
    relative_path = meta.get("relative_path") or ""
    if not isinstance(relative_path, str):
        raise ProtocolError(f"field 'relative_path' must be a string, got {shown(relative_path)}")
    filesize = _int_field(meta, "filesize", 0)
    chunksize = _int_field(meta, "chunksize", 1)
    chunk_number = _int_field(meta, "chunk_number", 0)
    payload = frames[1]
    size = len(payload.buffer) if hasattr(payload, "buffer") else len(payload)
    # NOTE: refused here, before a writer stores bytes of a file that can only be dropped at its end
    if size > chunksize:
        raise ProtocolError(f"chunk {chunk_number} has {size} bytes, more than its chunksize {chunksize}")
    count = meta.get("chunk_count")
    if isinstance(count, int) and not isinstance(count, bool) and chunk_number >= count:
        raise ProtocolError(f"chunk number {chunk_number} is out of range: chunk_count is {count}")
    last = meta.get("last_chunk")
    if isinstance(last, bool):
        is_last = last
    else:  # 4.x rule (§6.2): a short chunk, or the exact-multiple case
        is_last = size < chunksize or (filesize % chunksize == 0 and filesize // chunksize == chunk_number + 1)
    return DataMessage(meta, payload, relative_path, filename, filesize, chunksize, chunk_number, is_last,
                       htype is not None, kind, series)
