"""Helpers of the ``watchdog`` and ``polling`` source tests: an opened source on a real directory, and a writer
that makes a file grow slowly."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from hidra_core import create_driver


def opener(kind: str, src: Path) -> Iterator[Callable[..., Any]]:
    """``make(**options)``: an opened ``kind`` source on ``src``; every one is closed after the test."""
    opened: list[Any] = []

    def make(**options: Any) -> Any:
        source = create_driver("event source", kind, {"path": str(src), **options}, "<test>",
                               f"sender.source.{kind}")
        source.open(None)
        opened.append(source)
        return source

    yield make
    for source in opened:
        source.close()


def ids(events: list[Any]) -> set[str]:
    return {e.file_id for e in events}


class SlowWriter(threading.Thread):
    """Appends ``chunk`` to ``path`` every ``every_s`` for ``total_s``, then closes it."""

    def __init__(self, path: Path, total_s: float, every_s: float = 0.05, chunk: bytes = b"x" * 1000) -> None:
        super().__init__(daemon=True)
        self.path, self.total_s, self.every_s, self.chunk = path, total_s, every_s, chunk
        self.done = threading.Event()
        self.size = 0

    def run(self) -> None:
        stop = threading.Event()
        with open(self.path, "wb") as f:
            for _ in range(int(self.total_s / self.every_s)):
                f.write(self.chunk)
                f.flush()
                self.size += len(self.chunk)
                stop.wait(self.every_s)  # the pace of a slow detector, not synchronisation
        self.done.set()
