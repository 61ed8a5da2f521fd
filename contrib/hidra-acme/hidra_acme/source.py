"""The ``acme`` event source: one FileEvent per "file closed" notice of an ACME detector; never opens files.

The detector binds a PUB socket and publishes ``[topic, json]`` with ``{"path": ..., "size": ...}``; ``path``
is relative to ``root`` or absolute below it. Malformed notices are logged, counted and dropped.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
from typing import Any

import zmq
from pydantic import BaseModel, ConfigDict, Field

from hidra_core import EventSource, FileEvent

__all__ = ["AcmeConfig", "AcmeEventSource"]

log = logging.getLogger(__name__)

_BATCH = 1000  # notices returned by one poll at most, so the kernel's loop stays responsive


class AcmeConfig(BaseModel):
    """Options of the ``acme`` source (``source: {type: acme, acme: {endpoint: ..., root: ...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str = Field(description="the detector's notice endpoint (it binds PUB), e.g. tcp://det01:9999")
    root: str = Field(description="the detector's data directory; notice paths are relative to it")
    topic: str = Field("file-closed", min_length=1, description="topic of the file-closed notices")
    rcvhwm: int = Field(10_000, ge=1, description="notices queued before ZeroMQ drops new ones")


class AcmeEventSource(EventSource):
    config_class = AcmeConfig
    default_fetcher = "file"

    def __init__(self, config: AcmeConfig) -> None:
        super().__init__(config)
        self._root = os.path.abspath(config.root)
        self._topic = config.topic.encode()
        self._socket: zmq.Socket | None = None
        self.dropped = 0

    @property
    def root(self) -> str:
        return self._root

    def open(self, context: zmq.Context) -> None:
        # NOTE(acme): the kernel calls open() in the thread that polls, which therefore owns the socket.
        sock = context.socket(zmq.SUB)
        try:
            sock.linger = 0
            sock.rcvhwm = self.config.rcvhwm
            sock.subscribe(self._topic)
            sock.connect(self.config.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise OSError(exc.errno, f"cannot connect to {self.config.endpoint}: {exc.strerror}") from None
        self._socket = sock

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        if self._socket is None:
            raise RuntimeError("poll() before open()")
        if not self._socket.poll(timeout_ms):
            return []
        events: list[FileEvent] = []
        while len(events) < _BATCH:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event = self._event(frames)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _event(self, frames: list[bytes]) -> FileEvent | None:
        try:
            if len(frames) != 2 or frames[0] != self._topic:  # SUB matches prefixes: "file-closed-v2" too
                raise ValueError(f"expected [{self._topic!r}, json], got {len(frames)} frames")
            notice = json.loads(frames[1])
            size = notice.get("size")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
                raise ValueError(f"size {size!r} is not a byte count")
            relative_path, filename = posixpath.split(self._relative(notice["path"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.dropped += 1
            log.warning("dropped ACME notice %.200r: %s", frames[-1] if frames else b"", exc)
            return None
        return FileEvent(self._root, relative_path, filename, {"detector": "acme", "size": size})

    def _relative(self, path: Any) -> str:
        """``path`` as a plain ``/``-separated path below the root, or ValueError."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise ValueError(f"path {path!r} is not a non-empty string")
        if path.startswith("/"):
            prefix = self._root.rstrip("/") + "/"
            if not path.startswith(prefix):
                raise ValueError(f"path {path!r} is not below {self._root}")
            path = path[len(prefix):]
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise ValueError(f"path {path!r} has an empty, '.' or '..' component")
        return path
