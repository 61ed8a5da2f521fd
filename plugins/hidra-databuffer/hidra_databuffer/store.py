"""The bounded in-memory buffer of pulses behind the query API (databuffer.md §12).

Keyed by (channel, pulse id): a ``Pulse`` holds its payload as one immutable ``bytes`` and, per channel, where
the channel's value frame lies in it (or ``None``: the channel had no value at this pulse). Pulses the stream
never delivered are simply absent. Whole pulses are evicted, oldest pulse id first, when a bound on pulses,
bytes or age is passed. Per channel the store keeps a config history, so every event is served with the config
of its own pulse and a query over a type or shape change lists both configs.

Threads: one appending thread (the receiver's commit thread) and any number of readers (the HTTP server's
workers). Everything is guarded by one condition; readers copy references out under it and decode outside, which
is safe because a pulse is never changed once stored.

With a disk tier (``disk_tier.py``) the appending thread writes each batch through to disk first, outside the
condition, then into memory; a query reads memory from its oldest pulse on and the disk below it, so every pulse id
is served by one tier only, ascending. The retained window (``window``, the ``X-Databuffer-*`` headers) spans both.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple

from hidra_databuffer._decode import ChannelConfig, raw_size

if TYPE_CHECKING:
    from hidra_databuffer.disk_tier import DiskTier

__all__ = ["ChannelSelection", "Event", "Hit", "Pulse", "Store"]

log = logging.getLogger(__name__)

_PER_PULSE, _PER_EVENT = 200, 100  # NOTE: rough bytes of Python bookkeeping, so many tiny pulses count too
_PRUNE_EVERY = 1024


class Event(NamedTuple):
    """Where one channel's value frame lies in its pulse's payload, and the config it was sent with."""

    config: ChannelConfig
    offset: int
    size: int


@dataclass(eq=False)
class Pulse:
    """One delivered pulse: global timestamp, payload and the channels' events (``None``: no value at this pulse;
    ``absent`` then has the channel's config, if the header gave a valid one, so the channel is known)."""

    pulse_id: int
    sec: int
    ns: int
    blob: bytes
    events: Mapping[str, Event | None]
    absent: Mapping[str, ChannelConfig] = field(default_factory=dict)
    arrived: float = 0.0
    nbytes: int = field(init=False)
    #: the globalDate text, made by the first query that needs it (every reader makes the same text)
    date: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.nbytes = len(self.blob) + _PER_PULSE + _PER_EVENT * len(self.events)


#: one event of a query's answer: the pulse and the channel's event in it (a plain tuple: a query makes many)
Hit = tuple[Pulse, Event]


@dataclass
class ChannelSelection:
    """What a query gets for one channel: ``known`` false for a channel never seen."""

    name: str
    known: bool
    configs: list[ChannelConfig]
    hits: list[Hit]

    def raw_bytes(self) -> int:
        return sum(raw_size(event.config, event.size) for _, event in self.hits)


class Store:
    """Pulses by id, bounded by ``max_pulses``, ``max_bytes`` and (optional) ``max_age_s`` since arrival."""

    def __init__(self, max_pulses: int, max_bytes: int, max_age_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, disk: DiskTier | None = None) -> None:
        self.max_pulses, self.max_bytes, self.max_age_s = max_pulses, max_bytes, max_age_s
        self.disk = disk
        self._clock = clock
        self._cond = threading.Condition()
        self._ids: list[int] = []  # ascending; entries before _head are evicted (dropped in bulk now and then)
        self._head = 0
        self._pulses: dict[int, Pulse] = {}
        self._history: dict[str, list[tuple[int, ChannelConfig]]] = {}
        self._bytes = 0
        self._appended = 0
        self.evictions = {"pulses": 0, "bytes": 0, "age": 0, "restart": 0}
        self.gaps = self.missing_pulses = self.replaced = self.out_of_order = 0
        self.waiting = 0  # readers waiting for future pulses
        self.restarts = 0

    # --- the appending thread ---------------------------------------------------------------------------------
    def append(self, pulses: Iterable[Pulse]) -> None:
        """Store pulses and make them visible to queries at once."""
        if self.disk is not None:
            pulses = list(pulses)
            self.disk.append(pulses)  # NOTE: outside the condition: readers are not held up by disk writes
        with self._cond:
            for pulse in pulses:
                self._insert(pulse)
            self._evict()
            self._cond.notify_all()

    def _insert(self, pulse: Pulse) -> None:
        pulse.arrived = self._clock()
        pid = pulse.pulse_id
        newest = self._newest()
        if newest is not None and pid < newest - self.max_pulses:
            self._restart(pid, newest)
        old = self._pulses.get(pid)
        if old is not None:  # NOTE: re-sent after a restart: the newer copy wins, counted once
            self._bytes -= old.nbytes
            self.replaced += 1
        elif self._head == len(self._ids) or pid > self._ids[-1]:
            if self._head < len(self._ids) and pid > self._ids[-1] + 1:
                self.gaps += 1
                self.missing_pulses += pid - self._ids[-1] - 1
            self._ids.append(pid)
        else:
            self.out_of_order += 1
            bisect.insort(self._ids, pid, lo=self._head)
        self._pulses[pid] = pulse
        self._bytes += pulse.nbytes
        for name, event in pulse.events.items():
            config = pulse.absent.get(name) if event is None else event.config
            if config is not None:
                self._note_config(name, pid, config)
        self._appended += 1
        if self._appended % _PRUNE_EVERY == 0:
            self._prune_history()

    def _restart(self, pid: int, newest: int) -> None:
        """Pulse ids started again (a restarted simulator): evicting by pulse id would now throw away the new
        pulses first and keep the old ones, so the old ones go at once."""
        log.warning("databuffer: pulse %d arrived after pulse %d, more than max_pulses back: the stream's pulse ids"
                    " restarted; the %d pulses stored so far are dropped", pid, newest, len(self._ids) - self._head)
        self.evictions["restart"] += len(self._ids) - self._head
        self._ids, self._head, self._pulses, self._bytes = [], 0, {}, 0
        self.restarts += 1

    def _note_config(self, name: str, pid: int, config: ChannelConfig) -> None:
        history = self._history.setdefault(name, [])
        at = bisect.bisect_right(history, pid, key=lambda entry: entry[0])
        if at and history[at - 1][1] == config:
            return
        if at < len(history) and history[at][1] == config:  # NOTE: an earlier pulse of the next config
            history[at] = (pid, config)
            return
        history.insert(at, (pid, config))

    def _prune_history(self) -> None:
        """Forget configs that only evicted pulses used (the latest one of a channel always stays)."""
        oldest = self._oldest()
        if oldest is None:
            return
        for history in self._history.values():
            while len(history) > 1 and history[1][0] <= oldest:
                del history[0]

    def _evict(self) -> None:
        now = self._clock()
        while self._head < len(self._ids):
            pulse = self._pulses[self._ids[self._head]]
            if len(self._ids) - self._head > self.max_pulses:
                reason = "pulses"
            elif self._bytes > self.max_bytes and len(self._ids) - self._head > 1:
                reason = "bytes"
            elif self.max_age_s is not None and now - pulse.arrived > self.max_age_s:
                reason = "age"
            else:
                break
            del self._pulses[pulse.pulse_id]
            self._bytes -= pulse.nbytes
            self._head += 1
            self.evictions[reason] += 1
        if self._head > 4096 and self._head * 2 > len(self._ids):
            del self._ids[:self._head]
            self._head = 0

    # --- readers ----------------------------------------------------------------------------------------------
    def _oldest(self) -> int | None:
        return self._ids[self._head] if self._head < len(self._ids) else None

    def _newest(self) -> int | None:
        return self._ids[-1] if self._head < len(self._ids) else None

    def window(self) -> tuple[int | None, int | None]:
        """(oldest, newest) pulse id retained in either tier, ``None`` when empty."""
        with self._cond:
            self._evict()
            oldest, newest = self._oldest(), self._newest()
        if self.disk is not None:
            on_disk = [pid for pid in (self.disk.oldest(), oldest) if pid is not None]
            oldest = min(on_disk) if on_disk else None
            newest = newest if newest is not None else self.disk.newest()
        return oldest, newest

    def _disk_end(self, end: int) -> int:
        """The last pulse id of [.., end] the disk serves: the ones memory no longer (or not yet) holds."""
        oldest = self._oldest()
        return end if oldest is None else min(end, oldest - 1)

    def wait_for(self, pulse_id: int, timeout: float) -> bool:
        """Wait until a pulse at or after ``pulse_id`` is stored (at most ``timeout`` s); whether one is."""
        with self._cond:
            self.waiting += 1
            try:
                return self._cond.wait_for(lambda: (self._newest_any() or -1) >= pulse_id, timeout)
            finally:
                self.waiting -= 1

    def _newest_any(self) -> int | None:
        newest = self._newest()
        return newest if newest is not None or self.disk is None else self.disk.newest()

    def _range(self, start: int, end: int) -> list[Pulse]:
        lo = bisect.bisect_left(self._ids, start, lo=self._head)
        hi = bisect.bisect_right(self._ids, end, lo=lo)
        return [self._pulses[pid] for pid in self._ids[lo:hi]]

    def select(self, names: list[str], start: int, end: int) -> list[ChannelSelection]:
        """Per name the events stored in [start, end] (ascending) and the configs they were sent with."""
        with self._cond:
            self._evict()
            pulses = self._range(start, end)
            disk_end = self._disk_end(end)
            histories = {name: self._history_of(name) for name in names}
        return [self._select_one(name, pulses, start, disk_end, end, histories[name]) for name in names]

    def _history_of(self, name: str) -> list[tuple[int, ChannelConfig]] | None:
        """The channel's config history in both tiers (``None``: never seen)."""
        history = self._history.get(name)
        on_disk = self.disk.history(name) if self.disk is not None else None
        if not on_disk:  # NOTE: [] while the disk writes a new channel's first config: nothing of it is served yet
            return None if history is None else list(history)
        merged: list[tuple[int, ChannelConfig]] = []
        for pid, config in sorted([*on_disk, *(history or [])], key=lambda entry: entry[0]):
            if not merged or merged[-1][1] != config:
                merged.append((pid, config))
        return merged

    def _select_one(self, name: str, pulses: list[Pulse], start: int, disk_end: int, end: int,
                    history: list[tuple[int, ChannelConfig]] | None) -> ChannelSelection:
        if history is None:
            return ChannelSelection(name, False, [], [])
        hits = [(p, ev) for p in pulses if (ev := p.events.get(name)) is not None]
        if self.disk is not None and start <= disk_end:
            hits = self.disk.select(name, start, disk_end) + hits
        configs: list[ChannelConfig] = []
        for _, event in hits:
            if event.config not in configs:
                configs.append(event.config)
        if not configs:  # NOTE: no event in range: the config valid at its end says what the channel is
            at = bisect.bisect_right(history, end, key=lambda entry: entry[0])
            configs.append(history[max(at - 1, 0)][1])
        return ChannelSelection(name, True, configs, hits)

    def mapping(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """(pulse id, sec, ns) of every stored pulse in [start, end]."""
        with self._cond:
            found = [(p.pulse_id, p.sec, p.ns) for p in self._range(start, end)]
            disk_end = self._disk_end(end)
        if self.disk is not None and start <= disk_end:
            found = self.disk.mapping(start, disk_end) + found
        return found

    def channels(self) -> dict[str, list[tuple[int, ChannelConfig]]]:
        """Per channel its config history (first pulse id, config), oldest first."""
        with self._cond:
            names = sorted({*self._history, *(self.disk.names() if self.disk is not None else [])})
            return {name: history for name in names if (history := self._history_of(name))}

    def status(self) -> dict[str, Any]:
        with self._cond:
            self._evict()
            return {"oldest_pulse_id": self._oldest(), "newest_pulse_id": self._newest(),
                    "pulses": len(self._ids) - self._head, "bytes": self._bytes, "channels": len(self._history),
                    "max_pulses": self.max_pulses, "max_bytes": self.max_bytes, "max_age_s": self.max_age_s,
                    "evictions": sum(self.evictions.values()), "evictions_by_bound": dict(self.evictions),
                    "gaps": self.gaps, "missing_pulses": self.missing_pulses, "replaced": self.replaced,
                    "out_of_order": self.out_of_order, "restarts": self.restarts, "waiting_queries": self.waiting,
                    **({"disk": self.disk.status()} if self.disk is not None else {})}
