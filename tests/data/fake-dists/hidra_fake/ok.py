"""A well-behaved event-source driver with its own config model, and a class that is not a driver."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hidra_core import EventSource, FileEvent


class FakeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    root: str = "/fake-root"
    count: int = Field(1, ge=0)


class FakeEventSource(EventSource):
    """Reports ``count`` files named ``fake-<n>`` on its first poll, then nothing."""

    config_class = FakeConfig
    default_fetcher = "file"

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config)
        self.opened = False
        self._pending: list[FileEvent] = []

    @property
    def root(self) -> str:
        return self.config.root

    def open(self, context: Any) -> None:
        self.opened = True
        self._pending = [FileEvent(self.config.root, "", f"fake-{n}") for n in range(self.config.count)]

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        events, self._pending = self._pending, []
        return events

    def close(self) -> None:
        self.opened = False


class NotADriver:
    """Exported under hidra.event_sources but derives from no driver ABC."""
