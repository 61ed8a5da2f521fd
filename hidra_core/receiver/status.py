"""The 4.x status socket's state (hidra4-protocol.md §7.1): ``OK`` until a storing failure, then ``ERROR``;
and the receiver's periodic summary line."""
from __future__ import annotations

import logging
import threading
import time

__all__ = ["StatusBoard", "Summary"]

log = logging.getLogger(__name__)


class StatusBoard:
    """Shared by the receiving loop and the commit thread; answered on the status REP socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._error: list[bytes] | None = None

    def error(self, exc: BaseException) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._lock:
            self._error = [b"ERROR", stamp.encode(), type(exc).__name__.encode(), str(exc).encode()]

    def answer(self, request: list[bytes]) -> list[bytes]:
        with self._lock:
            if request == [b"STATUS_CHECK"]:
                return list(self._error) if self._error else [b"OK"]
            if request == [b"RESET_STATUS"]:
                self._error = None
                return [b"OK"]
            return [b"ERROR"]


class Summary:
    """The periodic summary line: rates since the last line, what is waiting, what went wrong so far."""

    def __init__(self, interval_s: float, stats: dict[str, int]) -> None:
        self.interval_s = interval_s
        self.stats = stats
        self._at = time.monotonic()
        self._stored = stats["stored"]
        self._bytes = stats["bytes"]
        self._last: tuple[int, ...] = ()

    def tick(self, unfinished: int, backlog: int, dropped: int) -> None:
        now = time.monotonic()
        if self.interval_s <= 0 or now - self._at < self.interval_s:
            return
        s = self.stats
        state = (s["stored"], unfinished, backlog, s["refused"], s["malformed"], s["failed"], dropped)
        if state != self._last or unfinished or backlog:  # an idle receiver does not repeat itself
            elapsed = now - self._at
            log.info("receiver: %.1f files/s, %.1f MiB/s, %d unfinished, %d waiting for commit; so far %d stored,"
                     " %d refused, %d malformed, %d failed, %d unfinished dropped",
                     (s["stored"] - self._stored) / elapsed, (s["bytes"] - self._bytes) / elapsed / 2**20,
                     unfinished, backlog, s["stored"], s["refused"], s["malformed"], s["failed"], dropped)
        self._last = state
        self._at, self._stored, self._bytes = now, s["stored"], s["bytes"]
