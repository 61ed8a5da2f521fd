"""Frozen records passed between the kernel and its plugins."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

__all__ = ["FILE", "FRAME", "KINDS", "PULSE", "SERIES_END", "SERIES_START", "FileEvent", "PluginStatus",
           "file_id_of", "payload_size"]

#: Message types. Each has its wire codec (``hidra_core.protocol``); writers declare the ones they take
#: (``Writer.accepts``) and the receiver routes by type. ``series_start`` carries a series' header, ``frame`` one
#: image of it, ``series_end`` closes it; a ``file`` stands alone; a ``pulse`` is one beam-synchronous event (every
#: channel's value at one pulse id, bsread), standing alone like a file.
FILE, SERIES_START, FRAME, SERIES_END, PULSE = "file", "series_start", "frame", "series_end", "pulse"
KINDS = frozenset({FILE, SERIES_START, FRAME, SERIES_END, PULSE})


def file_id_of(relative_path: str, filename: str) -> str:
    """The 4.x file id: ``relative_path/filename`` (one leading ``/`` stripped), or the name alone."""
    rel = relative_path[1:] if relative_path.startswith("/") else relative_path
    return f"{rel}/{filename}" if rel else filename


def payload_size(payload: Any) -> int:
    """Bytes in a buffer (``bytes``, ``memoryview``, a ``zmq.Frame``'s ``buffer``, a numpy array)."""
    return memoryview(payload).nbytes


@dataclass(frozen=True)
class FileEvent:
    """Something an event source says is ready to be sent: a file, or a frame or series event of a stream.

    ``source_path`` is the watched root (or the stream's address), ``relative_path`` the ``/``-separated directory
    below it ("" at the root) and ``filename`` the basename; together they name the event (``file_id``), which
    must be unique among the events a sender holds. ``extra`` carries source-specific facts that stay in the
    sender (for the fetcher).

    ``kind`` is the message type (``FILE``, ``SERIES_START``, ``FRAME``, ``SERIES_END``); ``series`` names the
    series a series event belongs to (writers key their output by it). ``metadata`` is JSON-able and travels on
    the wire (the ``metadata`` key) to writers and analysis clients, and into the ledger. ``payload`` is the data
    itself when it arrived in memory (one buffer, never copied; the ``inline`` fetcher sends it): such an event
    cannot be fetched again, so the sender holds it until the storage receiver confirmed it. ``size`` is its size
    when the source knows it; ``version`` an identity (ETag, sequence) that changes whenever the data does.
    """

    source_path: str
    relative_path: str
    filename: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    kind: str = FILE
    series: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    payload: Any = field(default=None, compare=False, repr=False)
    size: int | None = None
    version: str = ""

    @cached_property
    def file_id(self) -> str:
        # NOTE: cached (the fields are frozen): the router asks for it dozens of times per file
        return file_id_of(self.relative_path, self.filename)

    @property
    def inline(self) -> bool:
        """The data came with the event (a stream): it exists nowhere else until storage confirmed it."""
        return self.payload is not None

    @property
    def held_bytes(self) -> int:
        """Bytes of payload the sender holds for this event."""
        return 0 if self.payload is None else payload_size(self.payload)


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
