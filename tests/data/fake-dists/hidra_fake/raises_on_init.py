"""A driver that imports fine but whose constructor raises."""
from __future__ import annotations

from typing import Any

from hidra_core import EventSource


class RaisesOnInitEventSource(EventSource):
    def __init__(self, config: Any) -> None:
        raise RuntimeError("fake device hidra-fake-0 is not reachable")

    def open(self, context: Any) -> None:  # pragma: no cover - never constructed
        pass

    def poll(self, timeout_ms: int) -> list:  # pragma: no cover
        return []

    def close(self) -> None:  # pragma: no cover
        pass
