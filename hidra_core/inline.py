"""The ``inline`` fetcher: the data came with the event (``FileEvent.payload``), so fetching it is slicing it.

The kernel uses it for every event that carries a payload, whatever fetcher the config names for the others, so a
source may mix files and in-memory frames. "Removing" such data is letting go of it, which the sender does itself
once storage confirmed the copy; ``remove`` has nothing to do.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

from hidra_core.interfaces import Fetcher, FileStat
from hidra_core.types import FileEvent

__all__ = ["InlineFetcher"]


class InlineFetcher(Fetcher):
    def stat(self, event: FileEvent) -> FileStat | None:
        if event.payload is None:
            return None  # NOTE: not in-memory data (a misconfigured fetcher): reported by the sender as vanished
        now = time.time_ns()
        # NOTE: the identity must not change between sends of one event (a re-send is the same version)
        return FileStat(event.held_bytes, now, now,
                        identity=event.version or f"inline:{event.held_bytes}:{id(event.payload):x}")

    def chunks(self, event: FileEvent, stat: FileStat, chunksize: int) -> Iterator[Any]:
        view = memoryview(event.payload).cast("B")
        if view.nbytes != stat.size:
            raise OSError(f"{event.file_id}: payload has {view.nbytes} bytes, {stat.size} announced")
        if view.nbytes <= chunksize:
            yield event.payload if view.nbytes else b""
            return
        for start in range(0, view.nbytes, chunksize):
            yield view[start:start + chunksize]

    def remove(self, event: FileEvent, stat: FileStat) -> None:
        return None
