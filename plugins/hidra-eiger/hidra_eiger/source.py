"""The ``eiger_stream`` event source: one PULL connection to a DECTRIS DCU's stream, Stream V1 or V2.

The format is recognised per message: a first part that is a JSON object is Stream V1, a single part that is
anything else is decoded as Stream V2 CBOR. Frames are forwarded as the detector compressed them (zero-copy for
V1: the payload is the received ``zmq.Frame``'s buffer). Broken or unexpected messages are counted in ``stats``,
logged once per series, and skipped; the stream goes on.

A series still open when the source closes gets an aborted ``series_end``: logged at ``close`` and returned by
the first ``poll`` should the same instance be opened again. A new sender process does not know the series, so
its frames are then dropped as late until the next header.
"""
from __future__ import annotations

import logging
from typing import Any

import zmq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hidra_core import EventSource, FileEvent, connect_stream, receive_batch

from hidra_eiger import decode_v1, decode_v2
from hidra_eiger.messages import DecodeError, Message
from hidra_eiger.tracker import SeriesTracker

log = logging.getLogger(__name__)

__all__ = ["EigerStreamConfig", "EigerStreamSource", "decode_message"]

#: at most this many messages, or this many payload bytes, per poll (the kernel's hand-off is bounded in bytes)
BATCH_MESSAGES = 256
BATCH_BYTES = 64 << 20


class EigerStreamConfig(BaseModel):
    """Options of the ``eiger_stream`` source (``source: {type: eiger_stream, eiger_stream: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str = Field(description=(
        "the DCU's stream address, e.g. tcp://dcu:9999; Stream V1 or V2 is recognised from the messages. Only "
        "one client may connect: the DCU hands each message to one client"))
    relative_path: str = Field("", description="directory below the receiver's root that series and frames go to")
    name_pattern: str = Field("series_$id", description=(
        "name of a series (its HDF5 file and the frames' file names); $id is the detector's series id"))
    verify_hash: bool = Field(False, description=(
        "check the MD5 of Stream V1 images that carry a non-empty hash; a mismatch is counted and the frame "
        "dropped with an error"))
    rcvhwm: int = Field(32, gt=0, description=(
        "receive high-water mark in messages: how many images ZeroMQ buffers before the DCU's own buffer fills;"
        " kept small because these bytes are outside sender.hold.max_bytes (the DCU has GiBs of its own)"))

    @field_validator("relative_path")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = value.split("/") if value else []
        if value.startswith("/") or value.endswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"must be a relative path of plain names separated by '/', got {value!r}")
        return value

    @field_validator("name_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        # NOTE: without $id every series would get the same file names, and a later one would clash
        if "$id" not in value and "${id}" not in value:
            raise ValueError(f"must contain $id (the series id), got {value!r}")
        if "/" in value or value in (".", ".."):
            raise ValueError(f"must be a plain name (no '/'), got {value!r}")
        return value


def decode_message(parts: list[Any]) -> Message:
    """One message (its parts as buffers) of either format; raises ``DecodeError``."""
    if not parts:
        raise DecodeError("malformed", "empty message")
    first = memoryview(parts[0])
    if bytes(first[:16]).lstrip()[:1] == b"{":
        return decode_v1.decode(parts)
    if len(parts) != 1:
        raise DecodeError("malformed", f"{len(parts)}-part message whose first part is not a JSON object")
    return decode_v2.decode(parts[0])


class EigerStreamSource(EventSource):
    config_class = EigerStreamConfig
    default_fetcher = "inline"
    config: EigerStreamConfig

    def __init__(self, config: EigerStreamConfig) -> None:
        super().__init__(config)
        self._tracker = SeriesTracker(config.endpoint, config.relative_path, config.name_pattern,
                                      config.verify_hash, self.counters)
        self._sock: zmq.Socket | None = None
        self._pending: list[FileEvent] = []

    @property
    def root(self) -> str:
        return str(self.config.endpoint)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: frames, series, late, missing, malformed, unknown_encoding, hash_mismatch, ..."""
        return self._tracker.stats

    def open(self, context: zmq.Context) -> None:
        try:
            self._sock = connect_stream(context, self.config.endpoint, self.config.rcvhwm)
        except ValueError as exc:
            raise ValueError(f"eiger_stream: {exc}") from None
        log.info("eiger_stream: connected to %s", self.config.endpoint)

    def close(self) -> None:
        ended = self._tracker.abort("the source closed")
        if ended is not None:
            self._pending.append(ended)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        assert self._sock is not None, "open() first"
        out, self._pending = self._pending, []
        if out:
            return out
        for frames in receive_batch(self._sock, timeout_ms, BATCH_MESSAGES, BATCH_BYTES):
            out += self._handle(frames)
        return out

    def _handle(self, parts: list[Any]) -> list[FileEvent]:
        try:
            msg = decode_message(parts)
        except DecodeError as err:
            self._tracker.rejected(err)
            return []
        return self._tracker.handle(msg)
