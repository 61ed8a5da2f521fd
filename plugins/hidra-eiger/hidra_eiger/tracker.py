"""Series bookkeeping of the ``eiger_stream`` source: decoded messages in, ``FileEvent`` s out, problems counted.

One series is open at a time (the DCU streams one). Frames of another series, or before any header (a late
join), are dropped and counted: their shape and encoding are known only from the header. Image numbers are
expected to run 0, 1, 2, ... per series (both formats); a jump is counted as ``missing`` (and as the series'
``frames_lost`` in ``/metrics``) and warned about loudly, since the usual cause is a second client on the DCU's
PUSH socket, which gets every other message.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from string import Template
from typing import Any

from hidra_core import FRAME, SERIES_END, SERIES_START, Counters, FileEvent

from hidra_eiger.messages import DecodeError, End, Header, Image, Message

log = logging.getLogger(__name__)

__all__ = ["STATS", "SeriesTracker"]

STATS = ("frames", "series", "late", "missing", "malformed", "unknown_encoding", "unknown_htype",
         "hash_mismatch", "duplicate")


@dataclass
class _Series:
    key: str
    series_id: int
    unique_id: str | None
    channels: list[str]
    next_id: int = 0
    frames: int = 0
    missing: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    # NOTE: V1 has no unique id, and a restarted DCU counts series from 1 again: the header's arrival time tells
    # two series with the same id apart in the events' versions
    started_ns: int = field(default_factory=time.time_ns)

    @property
    def ident(self) -> str:
        return self.unique_id or f"{self.series_id}@{self.started_ns}"


class SeriesTracker:
    def __init__(self, endpoint: str, relative_path: str, name_pattern: str, verify_hash: bool,
                 counters: Counters) -> None:
        self.endpoint = endpoint
        self.counters = counters  # the source's, for /metrics: frames lost per series
        self.relative_path = relative_path
        self.pattern = Template(name_pattern)
        self.verify_hash = verify_hash
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        self.current: _Series | None = None
        self._orphan: Counter[str] = Counter()  # problems while no series is open

    # --- problems --------------------------------------------------------------------------------------------

    def problem(self, kind: str, text: str, *args: Any, level: int = logging.WARNING) -> None:
        """Count a problem; log it only the first time per series (the count follows at the series' end)."""
        self.stats[kind] += 1
        counts = self.current.problems if self.current is not None else self._orphan
        counts[kind] += 1
        if counts[kind] == 1:
            where = f"series {self.current.key}" if self.current is not None else "no series open"
            log.log(level, "%s (%s; further %s problems of this series are only counted): " + text,
                    self.endpoint, where, kind, *args)

    def _summarise(self, counts: Counter[str], where: str) -> None:
        for kind, n in sorted(counts.items()):
            if n > 1:
                log.warning("%s: %s: %d %s problems in all", self.endpoint, where, n, kind)
        counts.clear()

    def rejected(self, err: DecodeError) -> None:
        """A message the decoder refused; a rejected image still moves the expected image number on."""
        if err.series_id is not None and err.image_id is not None and self._is_current(err.series_id, None):
            assert self.current is not None
            self._advance(self.current, err.image_id)
        self.problem(err.kind, "%s", err, level=logging.ERROR)

    # --- messages --------------------------------------------------------------------------------------------

    def handle(self, msg: Message) -> list[FileEvent]:
        if isinstance(msg, Header):
            return self._header(msg)
        if isinstance(msg, Image):
            return self._image(msg)
        return self._end(msg)

    def abort(self, reason: str) -> FileEvent | None:
        """End the open series as aborted (``reason`` says why); None if none is open."""
        current, self.current = self.current, None
        if current is None:
            return None
        log.warning("%s: series %s ended without its end message after %d frames: %s", self.endpoint,
                    current.key, current.frames, reason)
        return self._end_event(current, aborted=True, reason=reason)

    def _header(self, msg: Header) -> list[FileEvent]:
        out: list[FileEvent] = []
        if self.current is not None:
            ended = self.abort(f"the header of series {msg.series_id} came before its end")
            out += [ended] if ended else []
        self._summarise(self._orphan, "before the header")
        key = self.pattern.safe_substitute(id=msg.series_id)
        self.current = _Series(key, msg.series_id, msg.unique_id, msg.channels)
        self.stats["series"] += 1
        blobs, offset = [], 0
        for blob in msg.blobs:
            size = memoryview(blob.data).nbytes
            blobs.append({"name": blob.name, "dtype": blob.dtype, "shape": blob.shape, "offset": offset,
                          "size": size})
            offset += size
        payload = b"".join(bytes(b.data) for b in msg.blobs)  # NOTE: header blobs are small and sent once
        meta = {"format": msg.format, "series_id": msg.series_id, "series_unique_id": msg.unique_id,
                "header_detail": msg.header_detail, "config": msg.config, "channels": msg.channels,
                "blobs": blobs, "user_data": msg.user_data}
        log.info("%s: series %s starts (%s, %s)", self.endpoint, key, msg.format, ", ".join(msg.channels))
        return out + [self._event(SERIES_START, f"{key}.start", meta, payload, "start")]

    def _is_current(self, series_id: int, unique_id: str | None) -> bool:
        cur = self.current
        return cur is not None and cur.series_id == series_id and (
            unique_id is None or cur.unique_id is None or cur.unique_id == unique_id)

    def _advance(self, cur: _Series, image_id: int) -> bool:
        """Move the expected image number past ``image_id``; False for an image already seen."""
        if image_id < cur.next_id:
            self.problem("duplicate", "image %d came again or out of order (expected %d); dropped", image_id,
                         cur.next_id)
            return False
        if image_id > cur.next_id:
            gap = image_id - cur.next_id
            cur.missing += gap
            self.stats["missing"] += gap
            self.counters.add("frames_lost", gap, series=cur.key)
            self._warn_gap(cur, gap, image_id)
        cur.next_id = image_id + 1
        return True

    def _warn_gap(self, cur: _Series, gap: int, image_id: int) -> None:
        cur.problems["missing"] += 1
        if cur.problems["missing"] == 1:
            log.error("%s: series %s: %d image(s) missing before image %d. Is another client connected to the "
                      "DCU's stream? Its PUSH socket hands each message to one client only, so a second PULL "
                      "(a viewer, another HiDRA) steals messages. Further gaps of this series are only counted.",
                      self.endpoint, cur.key, gap, image_id)

    def _image(self, msg: Image) -> list[FileEvent]:
        cur = self.current
        if cur is None or not self._is_current(msg.series_id, msg.unique_id):
            self.problem("late", "image %d of series %d arrived %s; dropped (its header was not seen)",
                         msg.image_id, msg.series_id, "before any header" if cur is None else "in another series")
            return []
        if not self._advance(cur, msg.image_id):
            return []
        if self.verify_hash and msg.md5 and hashlib.md5(msg.frames[0].payload).hexdigest() != msg.md5.lower():
            self.problem("hash_mismatch", "image %d: MD5 of the blob differs from the hash sent; dropped",
                         msg.image_id, level=logging.ERROR)
            return []
        out = []
        for frame in msg.frames:
            if frame.channel not in cur.channels:
                self.problem("malformed", "image %d has channel %r, not one of %s; dropped", msg.image_id,
                             frame.channel, cur.channels, level=logging.ERROR)
                continue
            name = f"{cur.key}_{msg.image_id:06d}" + (f"_{frame.channel}" if len(cur.channels) > 1 else "")
            meta: dict[str, Any] = {
                "series_id": cur.series_id, "series_unique_id": cur.unique_id, "image_id": msg.image_id,
                "channel": frame.channel, "channel_index": cur.channels.index(frame.channel), "shape": frame.shape,
                "dtype": frame.dtype, "compression": frame.compression, "hdf5_framed": frame.hdf5_framed,
                "encoding": frame.encoding, "element_size": int(frame.dtype[2:]), **msg.times}
            if msg.user_data is not None:
                meta["user_data"] = msg.user_data
            if msg.md5:
                meta["md5"] = msg.md5
            out.append(self._event(FRAME, name, meta, frame.payload, f"{msg.image_id}:{frame.channel}"))
        cur.frames += len(out)
        self.stats["frames"] += len(out)
        return out

    def _end(self, msg: End) -> list[FileEvent]:
        cur = self.current
        if cur is None or not self._is_current(msg.series_id, msg.unique_id):
            self.problem("late", "end of series %d arrived %s; dropped", msg.series_id,
                         "with no series open" if cur is None else "in another series")
            return []
        self.current = None
        log.info("%s: series %s ends: %d frames, %d missing", self.endpoint, cur.key, cur.frames, cur.missing)
        return [self._end_event(cur, aborted=False, reason="")]

    def _end_event(self, cur: _Series, *, aborted: bool, reason: str) -> FileEvent:
        self._summarise(cur.problems, f"series {cur.key}")
        meta = {"series_id": cur.series_id, "series_unique_id": cur.unique_id, "frames": cur.frames,
                "missing": cur.missing, "aborted": aborted, "reason": reason}
        return self._event(SERIES_END, f"{cur.key}.end", meta, b"", "end", cur)

    def _event(self, kind: str, filename: str, meta: dict[str, Any], payload: Any, tail: str,
               cur: _Series | None = None) -> FileEvent:
        cur = cur or self.current
        assert cur is not None
        return FileEvent(self.endpoint, self.relative_path, filename, kind=kind, series=cur.key, metadata=meta,
                         payload=payload, size=memoryview(payload).nbytes, version=f"{cur.ident}:{tail}")
