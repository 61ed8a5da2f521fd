"""A stream source and a series writer for the kernel's end-to-end tests of in-memory data.

``pushed`` connects a PULL socket to the test's PUSH socket; each message ``[json, payload]`` becomes one event
whose payload is the received frame's buffer (``json``: ``name``, optional ``kind``, ``series``, ``metadata``,
``version``). ``journal`` takes series messages and appends one JSON line per committed message to
``<root>/<series>.journal`` (name, kind, size, sha256 of the data), fsynced before ``commit`` returns: a test can
see exactly what storage confirmed, including duplicates.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import zmq
from pydantic import BaseModel, ConfigDict, Field

from hidra_core import FRAME, SERIES_END, SERIES_START, EventSource, FileEvent, Writer, WriteTarget


class PushedConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    endpoint: str = Field(description="the test's PUSH socket")


class PushedSource(EventSource):
    config_class = PushedConfig
    default_fetcher = "inline"

    @property
    def root(self) -> str | None:
        return self.config.endpoint

    def open(self, context: zmq.Context) -> None:
        self.sock = context.socket(zmq.PULL)
        self.sock.linger = 0
        self.sock.rcvhwm = 4
        self.sock.connect(self.config.endpoint)

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        events: list[FileEvent] = []
        if not self.sock.poll(timeout_ms):
            return events
        while len(events) < 64:
            try:
                head, payload = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            meta = json.loads(head.bytes)
            events.append(FileEvent(self.config.endpoint, "", meta["name"], kind=meta.get("kind", FRAME),
                                    series=meta.get("series", ""), metadata=meta.get("metadata", {}),
                                    payload=payload.buffer, size=len(payload), version=meta.get("version", "")))
        return events

    def close(self) -> None:
        self.sock.close()


class JournalWriter(Writer):
    accepts = frozenset({SERIES_START, FRAME, SERIES_END})

    def open(self, item: WriteTarget) -> Any:
        return {"item": item, "data": bytearray()}

    def write(self, handle: Any, data: Any) -> None:
        handle["data"] += data

    def close(self, handle: Any) -> None:
        return None

    def commit(self, handles: Sequence[Any]) -> None:
        files: dict[str, Any] = {}
        for handle in handles:
            item = handle["item"]
            path = os.path.join(item.root, f"{item.series or 'none'}.journal")
            if path not in files:
                files[path] = open(path, "a")
            line = {"name": item.filename, "kind": item.kind, "size": len(handle["data"]),
                    "sha256": hashlib.sha256(handle["data"]).hexdigest(), "metadata": item.event_metadata}
            files[path].write(json.dumps(line) + "\n")
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def abort(self, handle: Any) -> None:
        return None


class NullWriter(Writer):
    """Takes series messages and keeps nothing: the kernel's own cost, for benchmarks."""

    accepts = frozenset({SERIES_START, FRAME, SERIES_END})

    def open(self, item: WriteTarget) -> Any:
        return item

    def write(self, handle: Any, data: Any) -> None:
        return None

    def close(self, handle: Any) -> None:
        return None

    def commit(self, handles: Sequence[Any]) -> None:
        return None

    def abort(self, handle: Any) -> None:
        return None
