"""The data buffer's optional disk tier (databuffer.md §12): a longer window of pulses than the memory ring.

The layout and its crash rules are ``disk_layout.py``'s. Policy:

* **Write-through** from the store's one appending thread, before the pulses enter memory (so a pulse in memory
  is always on disk too, for the channels the disk takes: ``channels`` globs, default all). Value frames are
  stored exactly as received (raw or compressed), no fsync: a crash of the process loses nothing written, a
  power cut may lose the last seconds (the sender still holds what was not confirmed... and was confirmed).
* **Bounds** ``max_pulses``, ``max_bytes`` (payload bytes in segment files) and ``max_age_s`` (since the newest
  write to a segment): eviction drops whole segments (1000 pulse ids, every channel at once), oldest first, and
  never the newest segment for the pulse and byte bounds, so the disk keeps up to 999 pulses fewer than
  ``max_pulses``. Evicted pulses are counted per bound. Pulse ids that start again far below the newest pulse (a
  restarted stream) drop everything on disk (``restart``), as the memory ring does.
* **Reload**: a new tier on the same path reads only the pulse index files (24 kB per 1000 pulse ids), the config
  histories and the segment files' sizes; channel indexes and payloads are read when a query needs them.
* **Readers** take the lock only to copy the bookkeeping; they read index files and map segment files outside it.
  A query's disk events are ``Hit``s whose pulse ``blob`` is a read-only ``mmap`` of the segment file (pages are
  read when the value is encoded, so a query refused for its size reads no payload).
"""
from __future__ import annotations

import bisect
import errno
import fnmatch
import logging
import mmap
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from hidra_databuffer._decode import ChannelConfig
from hidra_databuffer.disk_layout import (
    CHANNEL_SLOT, FOLDER, NO_CONFIG, NONE, PULSE_SLOT, SEGMENT, VALUE, BadName, Slots, decode_name, encode_name,
    read_configs, segment_dir, write_config)

if TYPE_CHECKING:
    from hidra_databuffer.store import Hit, Pulse

__all__ = ["DiskTier"]

log = logging.getLogger(__name__)


@dataclass
class _Segment:
    """Bookkeeping of the pulse ids ``number * 1000 ...`` on disk."""

    number: int
    delivered: bytearray = field(default_factory=lambda: bytearray(SEGMENT))
    pulses: int = 0
    bytes: int = 0
    written: float = 0.0

    def ids(self) -> list[int]:
        base = self.number * SEGMENT
        return [base + i for i, flag in enumerate(self.delivered) if flag]


@dataclass
class _Channel:
    name: str
    base: Path
    history: list[tuple[int, ChannelConfig]]  # line number = config number


class _Open:
    """Open segment and index files of one channel and segment (the appending thread's only)."""

    def __init__(self, base: Path, segment: int) -> None:
        folder = segment_dir(base, segment)
        folder.mkdir(parents=True, exist_ok=True)
        self.seg = os.open(folder / f"{segment}.seg", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.idx = os.open(folder / f"{segment}.idx", os.O_RDWR | os.O_CREAT, 0o644)
        self.size = os.fstat(self.seg).st_size
        self._forget_torn(folder / f"{segment}.idx")

    def _forget_torn(self, index: Path) -> None:
        """Clear slots whose frame ends past the file (torn by a crash): appending would make them look whole."""
        data = os.pread(self.idx, SEGMENT * CHANNEL_SLOT.size, 0)
        for number, slot in enumerate(CHANNEL_SLOT.unpack_all(data)):
            if slot is not None and slot[0] == VALUE and slot[3] + slot[4] > self.size:
                log.warning("databuffer disk: slot %d of %s is torn (frame past the end), cleared", number, index)
                os.pwrite(self.idx, bytes(CHANNEL_SLOT.size), number * CHANNEL_SLOT.size)

    def close(self) -> None:
        os.close(self.seg)
        os.close(self.idx)


class DiskTier:
    """Pulses on disk under ``root`` (see the module doc)."""

    def __init__(self, root: str | Path, max_pulses: int, max_bytes: int, max_age_s: float | None = None,
                 channels: Sequence[str] = ("*",), clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.max_pulses, self.max_bytes, self.max_age_s = max_pulses, max_bytes, max_age_s
        self._patterns, self._clock = list(channels), clock
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._order: list[int] = []  # segment numbers ascending
        self._channels: dict[str, _Channel] = {}
        self._open: dict[tuple[str, int], _Open] = {}
        self._pulse_fds: dict[int, int] = {}
        self._refused: dict[str, bool] = {}
        self.evictions = {"pulses": 0, "bytes": 0, "age": 0, "restart": 0}
        self.write_errors = 0
        (self.root / "pulses").mkdir(parents=True, exist_ok=True)
        (self.root / "channels").mkdir(exist_ok=True)
        self._reload()

    # --- reload -----------------------------------------------------------------------------------------------
    def _reload(self) -> None:
        for entry in sorted((self.root / "channels").iterdir()):
            try:
                if not entry.is_dir():
                    raise BadName("not a directory")
                name = decode_name(entry.name)
            except BadName as exc:
                log.warning("databuffer disk: %s ignored: %s", entry, exc)
                continue
            self._channels[name] = _Channel(name, entry, read_configs(entry / "configs.jsonl"))
        for index in (self.root / "pulses").glob("*/*.idx"):
            if index.stem.isdigit():
                self._load_segment(int(index.stem), index)
        self._order = sorted(self._segments)
        if self._order:
            log.info("databuffer disk: %d pulses of %d channels reloaded from %s (pulse ids %s..%s)",
                     sum(s.pulses for s in self._segments.values()), len(self._channels), self.root, self.oldest(),
                     self.newest())

    def _load_segment(self, number: int, index: Path) -> None:
        segment = _Segment(number)
        for i, slot in enumerate(PULSE_SLOT.unpack_all(index.read_bytes())):
            if slot is not None:
                segment.delivered[i] = 1
                segment.pulses += 1
        if not segment.pulses:
            return
        segment.written = index.stat().st_mtime
        for channel in self._channels.values():
            try:
                segment.bytes += (segment_dir(channel.base, number) / f"{number}.seg").stat().st_size
            except FileNotFoundError:
                pass
        self._segments[number] = segment

    # --- the appending thread ---------------------------------------------------------------------------------
    def takes(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._patterns)

    def append(self, pulses: Sequence[Pulse]) -> None:
        """Write the pulses (each committed by its pulse slot, last), then evict past the bounds."""
        try:
            for pulse in pulses:
                self._append_one(pulse)
            self._close_old()
            self._evict()
        except OSError as exc:  # NOTE: a full disk must not stop the memory ring: counted, logged, and retried
            self.write_errors += 1
            log.error("databuffer disk: writing to %s failed (%d failures so far): %s", self.root,
                      self.write_errors, exc)
            self._close_old(None)  # NOTE: reopened, the files' sizes are read again: a short write is no hole

    def _append_one(self, pulse: Pulse) -> None:
        pid = pulse.pulse_id
        newest = self.newest()
        if newest is not None and pid < newest - self.max_pulses:
            log.warning("databuffer disk: pulse %d after pulse %d: pulse ids restarted, the disk tier is emptied",
                        pid, newest)
            self._drop(list(self._order), "restart")
        number, slot = divmod(pid, SEGMENT)
        written = 0
        for name, event in pulse.events.items():
            channel = self._channel(name)
            if channel is None:
                continue
            files = self._files(channel, number)
            if event is None:
                config = pulse.absent.get(name)
                state, offset, length = NONE, 0, 0
            else:
                config, state, offset, length = event.config, VALUE, files.size, event.size
                if os.write(files.seg, memoryview(pulse.blob)[event.offset:event.offset + length]) != length:
                    raise OSError(errno.ENOSPC, f"short write to the segment of {name!r}")
                files.size += length
                written += length
            config_no = NO_CONFIG if config is None else self._config_number(channel, pid, config)
            os.pwrite(files.idx, CHANNEL_SLOT.pack(state, pulse.sec, pulse.ns, offset, length, config_no),
                      slot * CHANNEL_SLOT.size)
        self._commit(pulse, number, slot, written)

    def _commit(self, pulse: Pulse, number: int, slot: int, written: int) -> None:
        fd = self._pulse_index(number)
        os.pwrite(fd, PULSE_SLOT.pack(pulse.sec, pulse.ns), slot * PULSE_SLOT.size)
        with self._lock:
            segment = self._segments.get(number)
            if segment is None:
                segment = self._segments[number] = _Segment(number)
                bisect.insort(self._order, number)
            if not segment.delivered[slot]:
                segment.delivered[slot] = 1
                segment.pulses += 1
            segment.bytes += written
            segment.written = self._clock()

    def _pulse_index(self, number: int) -> int:
        fd = self._pulse_fds.get(number)
        if fd is None:
            folder = segment_dir(self.root / "pulses", number)
            folder.mkdir(parents=True, exist_ok=True)
            fd = self._pulse_fds[number] = os.open(folder / f"{number}.idx", os.O_RDWR | os.O_CREAT, 0o644)
        return fd

    def _channel(self, name: str) -> _Channel | None:
        channel = self._channels.get(name)
        if channel is not None or not self.takes(name):
            return channel
        try:
            encoded = encode_name(name)
        except BadName as exc:
            if not self._refused.get(name):
                self._refused[name] = True
                log.error("databuffer disk: channel kept in memory only: %s", exc)
            return None
        base = self.root / "channels" / encoded
        base.mkdir(exist_ok=True)
        channel = _Channel(name, base, [])
        with self._lock:
            self._channels[name] = channel
        return channel

    def _files(self, channel: _Channel, number: int) -> _Open:
        files = self._open.get((channel.name, number))
        if files is None:
            files = self._open[(channel.name, number)] = _Open(channel.base, number)
        return files

    def _config_number(self, channel: _Channel, pid: int, config: ChannelConfig) -> int:
        history = channel.history
        if history and history[-1][1] == config:
            return len(history) - 1
        write_config(channel.base / "configs.jsonl", pid, config)
        with self._lock:
            history.append((pid, config))
        return len(history) - 1

    def _close_old(self, keep: int | None = -1) -> None:
        """Close the files of every segment but ``keep`` (-1: the newest; None: all)."""
        if keep == -1:
            keep = self._order[-1] if self._order else None
        for key in [k for k in self._open if k[1] != keep]:
            self._open.pop(key).close()
        for number in [n for n in self._pulse_fds if n != keep]:
            os.close(self._pulse_fds.pop(number))

    # --- eviction ---------------------------------------------------------------------------------------------
    def _evict(self) -> None:
        now = self._clock()
        doomed: list[tuple[int, str]] = []
        with self._lock:
            pulses = sum(s.pulses for s in self._segments.values())
            size = sum(s.bytes for s in self._segments.values())
            for number in self._order:
                segment, last = self._segments[number], number == self._order[-1]
                if pulses > self.max_pulses and not last:
                    reason = "pulses"
                elif size > self.max_bytes and not last:
                    reason = "bytes"
                elif self.max_age_s is not None and now - segment.written > self.max_age_s:
                    reason = "age"
                else:
                    break
                doomed.append((number, reason))
                pulses, size = pulses - segment.pulses, size - segment.bytes
        for number, reason in doomed:
            self._drop([number], reason)

    def _drop(self, numbers: list[int], reason: str) -> None:
        """Forget whole segments, then delete their files: the pulse index first, so they are gone at once."""
        self._close_old(None)
        with self._lock:
            for number in numbers:
                segment = self._segments.pop(number, None)
                if segment is not None:
                    self._order.remove(number)
                    self.evictions[reason] += segment.pulses
            channels = list(self._channels.values())
        for number in numbers:
            for base in [self.root / "pulses", *(c.base for c in channels)]:
                folder = segment_dir(base, number)
                for suffix in (".idx", ".seg"):
                    (folder / f"{number}{suffix}").unlink(missing_ok=True)
                if number % (FOLDER // SEGMENT) == FOLDER // SEGMENT - 1:  # NOTE: the folder's last segment
                    shutil.rmtree(folder, ignore_errors=True)
        if reason == "restart":
            for base in [self.root / "pulses", *(c.base for c in channels)]:
                for folder in base.iterdir():
                    if folder.is_dir():
                        shutil.rmtree(folder, ignore_errors=True)

    # --- readers ----------------------------------------------------------------------------------------------
    def oldest(self) -> int | None:
        with self._lock:
            if not self._order:
                return None
            segment = self._segments[self._order[0]]
            return segment.number * SEGMENT + segment.delivered.find(1)

    def newest(self) -> int | None:
        with self._lock:
            if not self._order:
                return None
            segment = self._segments[self._order[-1]]
            return segment.number * SEGMENT + segment.delivered.rfind(1)

    def _span(self, start: int, end: int) -> list[tuple[int, list[int]]]:
        """(segment, delivered ids in [start, end]) of the segments that hold any, ascending."""
        with self._lock:
            found = []
            for number in self._order[bisect.bisect_left(self._order, start // SEGMENT):]:
                if number * SEGMENT > end:
                    break
                ids = [pid for pid in self._segments[number].ids() if start <= pid <= end]
                if ids:
                    found.append((number, ids))
            return found

    def mapping(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """(pulse id, sec, ns) of every pulse on disk in [start, end]."""
        out = []
        for number, ids in self._span(start, end):
            slots = self._read_slots(self.root / "pulses", number, PULSE_SLOT)
            out += [(pid, slot[0], slot[1]) for pid in ids if (slot := slots[pid % SEGMENT]) is not None]
        return out

    def history(self, name: str) -> list[tuple[int, ChannelConfig]] | None:
        """The channel's config history on disk (``None``: the disk never had the channel)."""
        with self._lock:
            channel = self._channels.get(name)
            return None if channel is None else list(channel.history)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._channels)

    def select(self, name: str, start: int, end: int) -> list[Hit]:
        """The channel's events on disk in [start, end], ascending, as (pulse, event) with the mapped segment."""
        from hidra_databuffer.store import Event, Pulse

        history = self.history(name)
        if not history:
            return []
        with self._lock:
            base = self._channels[name].base
        hits: list[Hit] = []
        for number, ids in self._span(start, end):
            slots = self._read_slots(base, number, CHANNEL_SLOT)
            wanted = [(pid, s) for pid in ids if (s := slots[pid % SEGMENT]) is not None and s[0] == VALUE
                      and s[5] < len(history)]
            blob = self._map(segment_dir(base, number) / f"{number}.seg") if wanted else None
            for pid, (_, sec, ns, offset, length, config_no) in wanted:
                if blob is not None and offset + length <= len(blob):  # NOTE: a torn frame counts as absent
                    hits.append((Pulse(pid, sec, ns, blob, {}), Event(history[config_no][1], offset, length)))
        return hits

    @staticmethod
    def _read_slots(base: Path, number: int, slots: Slots) -> list[tuple[int, ...] | None]:
        try:
            return slots.unpack_all((segment_dir(base, number) / f"{number}.idx").read_bytes())
        except FileNotFoundError:  # NOTE: evicted while we looked
            return [None] * SEGMENT

    @staticmethod
    def _map(path: Path) -> Any:
        try:
            with open(path, "rb") as file:
                return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (FileNotFoundError, ValueError):  # NOTE: evicted, or empty
            return None

    def status(self) -> dict[str, Any]:
        with self._lock:
            pulses = sum(s.pulses for s in self._segments.values())
            size = sum(s.bytes for s in self._segments.values())
            segments = len(self._order)
        return {"path": str(self.root), "oldest_pulse_id": self.oldest(), "newest_pulse_id": self.newest(),
                "pulses": pulses, "bytes": size, "segments": segments, "channels": len(self.names()),
                "max_pulses": self.max_pulses, "max_bytes": self.max_bytes, "max_age_s": self.max_age_s,
                "evictions": sum(self.evictions.values()), "evictions_by_bound": dict(self.evictions),
                "write_errors": self.write_errors}

    def close(self) -> None:
        self._close_old(None)

