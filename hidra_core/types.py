"""Frozen records passed between the kernel and its plugins."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["FileEvent", "PluginStatus", "file_id_of"]


def file_id_of(relative_path: str, filename: str) -> str:
    """The 4.x file id: ``relative_path/filename`` (one leading ``/`` stripped), or the name alone."""
    rel = relative_path[1:] if relative_path.startswith("/") else relative_path
    return f"{rel}/{filename}" if rel else filename


@dataclass(frozen=True)
class FileEvent:
    """A file (or frame) that an event source says is ready to be sent.

    ``source_path`` is the watched root, ``relative_path`` the ``/``-separated directory below it ("" at the
    root) and ``filename`` the basename. ``extra`` carries source-specific facts (sizes, inline payloads).
    """

    source_path: str
    relative_path: str
    filename: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def file_id(self) -> str:
        return file_id_of(self.relative_path, self.filename)


@dataclass(frozen=True)
class PluginStatus:
    """What discovery found for one entry point: loaded or failed, and why."""

    group: str
    name: str
    distribution: str
    version: str
    value: str
    loaded: bool
    error: str = ""
