"""The receiver's unfinished files, bounded per sender and in total (each one holds a descriptor per writer).

A sender is its confirmation topic, or its peer address when it asks for none. A real sender has one file in
flight; a sender that opens more than its share loses its least recently active ones first, so a flood of first
chunks can neither exhaust descriptors nor push out another sender's files.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from hidra_core.interfaces import WriteTarget

__all__ = ["Partial", "Partials"]

log = logging.getLogger(__name__)

#: an unfinished file without a chunk for this long is dropped
IDLE_TIMEOUT_S = 300.0
#: ... or for this long, while its sender (or the receiver) is at its bound of unfinished files
CROWDED_TIMEOUT_S = 10.0


@dataclass
class Partial:
    target: WriteTarget
    handles: list[Any]
    hasher: Any
    algorithm: str | None
    sender: str = ""
    next_chunk: int = 0
    size: int = 0
    started: float = field(default_factory=time.monotonic)
    touched: float = field(default_factory=time.monotonic)


class Partials:
    """file id -> ``Partial``, least recently active first; ``abort`` forgets a dropped file's data."""

    def __init__(self, per_sender: int, total: int, abort: Callable[[Partial], None]) -> None:
        self.per_sender = per_sender
        self.total = total
        self.dropped = 0
        self._abort = abort
        self._all: OrderedDict[str, Partial] = OrderedDict()
        self._by_sender: dict[str, OrderedDict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def get(self, fid: str) -> Partial | None:
        return self._all.get(fid)

    def touch(self, fid: str) -> None:
        partial = self._all[fid]
        partial.touched = time.monotonic()
        self._all.move_to_end(fid)
        self._by_sender[partial.sender].move_to_end(fid)

    def add(self, fid: str, partial: Partial) -> None:
        """Keep ``partial``; first drop what is over the sender's or the total bound."""
        mine = self._by_sender.setdefault(partial.sender, OrderedDict())
        while len(mine) >= self.per_sender:
            self._drop(next(iter(mine)), f"sender {partial.sender!r} has {self.per_sender} unfinished files")
        while len(self._all) >= self.total:
            self._drop(next(iter(self._all)), f"{self.total} unfinished files in all")
        self._all[fid] = partial
        mine[fid] = None

    def pop(self, fid: str) -> Partial:
        partial = self._all.pop(fid)
        mine = self._by_sender[partial.sender]
        del mine[fid]
        if not mine:
            del self._by_sender[partial.sender]
        return partial

    def drain(self) -> Iterator[Partial]:
        while self._all:
            yield self.pop(next(iter(self._all)))

    def expire(self) -> None:
        now = time.monotonic()
        crowded = len(self._all) >= self.total
        full = {sender for sender, fids in self._by_sender.items() if len(fids) >= self.per_sender}
        for fid, partial in list(self._all.items()):
            idle = now - partial.touched
            if idle < CROWDED_TIMEOUT_S:
                break  # the rest were active more recently
            if idle >= IDLE_TIMEOUT_S:
                log.warning("%s: no chunk for %.0f s; incomplete file dropped", fid, idle)
                self._abort(self.pop(fid))
            elif crowded or partial.sender in full:
                self._drop(fid, f"no chunk for {idle:.0f} s while at the bound of unfinished files")

    def _drop(self, fid: str, why: str) -> None:
        partial = self.pop(fid)
        self._abort(partial)
        self.dropped += 1
        if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8, ...: a flood cannot flood the log
            log.warning("%s: unfinished file dropped, %s (%d dropped so far)", fid, why, self.dropped)
