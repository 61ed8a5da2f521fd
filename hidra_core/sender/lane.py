"""The sender's data pipelines (``sender.streams``) and which one, and which storage group member, a file takes.

Each pipeline (``Lane``) has a fetch worker of its own, which reads and hashes in its own thread (both release the
GIL), and a PUSH socket to every member of the storage receiver group; the router loop drives them all and owns
their sockets. A file goes out through one pipeline to one member. Every event of a series takes the same pipeline
and member, so that the receiver gets start, frames and end in order; the versions of one file stay in one
pipeline while one of them is in it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import xxhash
import zmq

from hidra_core.sender.fetch import Fetching
from hidra_core.sender.outgoing import Outgoing
from hidra_core.types import SERIES_END, FileEvent

__all__ = ["Lane", "Members", "member_for", "series_lane"]

_SERIES_KEPT = 10_000  # series whose member is remembered (one that never ends is forgotten eventually)


@dataclass(eq=False)
class Lane:
    index: int
    fetching: Fetching
    sockets: list[zmq.Socket]  # PUSH, one per member of the storage group
    current: Outgoing | None = None  # the file being sent: the oldest job of the fetch worker
    job: int | None = None  # its job
    member: int = 0  # the member it goes to
    stash: list[Any] | None = None  # a message its socket had no room for
    polled: zmq.Socket | None = None  # the socket the router polls for room now

    @property
    def sendable(self) -> bool:
        return self.stash is not None or (self.current is not None and self.current.ready)

    @property
    def started(self) -> bool:
        """Some of the current file went out already."""
        return self.stash is not None or (self.current is not None and self.current.sent_any)


def member_for(key: str, members: Sequence[str], live: Sequence[int]) -> int:
    """Rendezvous hashing over the live members (all of them when none is up): a member that goes away moves
    only its own files; the others stay where they were."""
    if len(members) == 1:
        return 0
    candidates = live or range(len(members))
    return max(candidates, key=lambda i: _hash(f"{members[i]}\n{key}"))


class Members:
    """Which member of the storage receiver group an event goes to: a file by rendezvous hashing of its path over
    the members up; a series stays with the member it started on until its end, unless that one goes away (a
    member back from a restart must not open the series file another one now writes)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self._series: dict[str, int] = {}

    def __call__(self, event: FileEvent, live: Sequence[int]) -> int:
        if len(self.names) == 1:
            return 0
        if not event.series:
            return member_for(event.file_id, self.names, live)
        member = self._series.get(event.series)
        if member is None or (live and member not in live):
            member = self._series[event.series] = member_for(event.series, self.names, live)
            if len(self._series) > _SERIES_KEPT:
                del self._series[next(iter(self._series))]
        if event.kind == SERIES_END:
            del self._series[event.series]
        return member


def series_lane(key: str, count: int) -> int:
    return _hash(key) % count


def _hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogateescape"))
