"""The 4.x status socket's state (hidra4-protocol.md §7.1): ``OK`` until a storing failure, then ``ERROR``."""
from __future__ import annotations

import threading
import time

__all__ = ["StatusBoard"]


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
