"""What the loops keep for the REST thread beyond their counters: histograms and the recent problem lines.

Both are written by one thread and read by another without a lock: a reader copies a list (atomic under the
GIL), so it sees at worst one observation less in the sum than in the buckets.
"""
from __future__ import annotations

import bisect
import collections
import logging
import time
from typing import Any, Sequence

__all__ = ["DURABLE_BOUNDS_S", "COMMIT_BOUNDS_S", "Histogram", "RecentProblems"]

#: seconds from a file's first chunk to its copy being durable
DURABLE_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: seconds one group commit (the writers' fsyncs) takes
COMMIT_BOUNDS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Counts of observations per bucket (upper bounds ``bounds``, then +Inf) and their sum; one writer."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> dict[str, Any]:
        """``{"bounds", "counts" (per bucket, not cumulative), "sum"}``, JSON-able."""
        return {"bounds": list(self.bounds), "counts": self._counts[:], "sum": self._sum}


class RecentProblems(logging.Handler):
    """The last WARNING and ERROR lines of the process, for ``GET /status``."""

    def __init__(self, keep: int = 20) -> None:
        super().__init__(logging.WARNING)
        self._lines: collections.deque[dict[str, str]] = collections.deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # NOTE: a bad format string is the caller's bug; the status page shows the raw one
            message = str(record.msg)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        self._lines.append({"time": stamp, "level": record.levelname, "logger": record.name, "message": message})

    def lines(self) -> list[dict[str, str]]:
        return list(self._lines)
