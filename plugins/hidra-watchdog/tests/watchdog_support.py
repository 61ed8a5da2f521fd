"""Helpers of the ``watchdog`` and ``polling`` source tests: a writer that makes a file grow slowly."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


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
