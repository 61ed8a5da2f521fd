"""The DCU's RAM file store: files as bytes that grow to their final size, a finite buffer, a record of every file."""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Created", "FileStore", "Stalled", "StoredFile", "random_bytes"]


class Stalled(Exception):
    """Raised by ``FileStore.reserve`` when the waiting writer was told to stop (abort, reboot)."""


def random_bytes(size: int) -> bytes:
    # NOTE: numpy's generator makes ~1 GB/s of random bytes; os.urandom is several times slower
    return np.random.default_rng().bytes(size)


@dataclass
class Created:
    """One entry of ``simulator/status/created``: every file this process ever created, deleted ones too."""

    path: str
    created: float
    size: int = 0
    md5: str | None = None
    complete: bool = False
    deleted: bool = False
    deleted_at: float | None = None
    wiped: bool = False

    def value(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "md5": self.md5 if self.complete else None,
                "complete": self.complete, "created": self.created, "deleted": self.deleted,
                "deleted_at": self.deleted_at, "wiped": self.wiped}


@dataclass
class StoredFile:
    """A file in RAM. ``content`` is final; ``limit`` is how much of it the writer has written so far.

    # NOTE: the served bytes are a prefix of the final content, like a file a writer appends to; with ``grow_s``
    # the visible prefix also grows with time (a slow writer), whichever is shorter wins
    """

    path: str
    content: bytes
    limit: int
    written: bool
    grow_s: float
    record: Created
    start: float = field(default_factory=time.time)
    changed_ns: int = field(default_factory=time.time_ns)

    def size(self, now: float) -> int:
        if self.grow_s <= 0:
            return self.limit
        fraction = min(1.0, (now - self.start) / self.grow_s)
        return min(self.limit, int(len(self.content) * fraction))

    def complete(self, now: float) -> bool:
        return self.written and self.size(now) == len(self.content)

    def mtime_ns(self, now: float) -> int:
        if self.grow_s <= 0:
            return self.changed_ns
        return max(self.changed_ns, int((self.start + min(now - self.start, self.grow_s)) * 1e9))


class FileStore:
    """Thread-safe: the writer (trigger threads) adds and grows files, HTTP handlers list, read and delete them.

    ``knobs()`` returns the simulator config values (``grow_s``, ``buffer_bytes``) at the moment they matter.
    """

    def __init__(self, knobs: Callable[[], dict[str, Any]]) -> None:
        self._knobs = knobs
        self._files: dict[str, StoredFile] = {}  # NOTE: insertion order = creation order = listing order
        self._created: list[Created] = []
        self._cond = threading.Condition()

    # --- writer side ---------------------------------------------------------------------------------------------
    def add(self, path: str, content: bytes, limit: int | None = None) -> StoredFile:
        """Create ``path`` (replacing a file of that name: name reuse) with ``limit`` bytes written (all if None)."""
        record = Created(path, time.time())
        stored = StoredFile(path, content, len(content) if limit is None else limit, limit is None,
                            float(self._knobs()["grow_s"]), record)
        record.size, record.md5 = len(content), hashlib.md5(content).hexdigest()
        with self._cond:
            old = self._files.pop(path, None)
            if old is not None:
                self._mark(old, wiped=False)
            self._files[path] = stored
            self._created.append(record)
            self._note_complete(stored, stored.start)
            self._cond.notify_all()
        return stored

    def grow(self, stored: StoredFile, limit: int, *, written: bool = False, content: bytes | None = None) -> None:
        """The writer wrote up to ``limit`` bytes (``written``: the file is final); ``content`` replaces it."""
        with self._cond:
            if content is not None:
                stored.content = content
                stored.record.size, stored.record.md5 = len(content), hashlib.md5(content).hexdigest()
            stored.limit = min(limit, len(stored.content))
            stored.written = written
            stored.changed_ns = time.time_ns()
            self._cond.notify_all()

    def reserve(self, nbytes: int, stop: threading.Event) -> None:
        """Wait until ``nbytes`` more fit into the buffer: the detector stalls while the DCU's RAM is full."""
        with self._cond:
            while not self._fits(nbytes):
                if stop.is_set():
                    raise Stalled
                # NOTE: the timeout only re-checks ``stop``; deletions and reboots notify at once
                self._cond.wait(timeout=0.2)

    def _fits(self, nbytes: int) -> bool:
        total = int(self._knobs()["buffer_bytes"])
        return total == 0 or self._used() + nbytes <= total

    def _used(self) -> int:
        return sum(f.limit for f in self._files.values())

    def buffer_free(self) -> float:
        """``builder/dcu_buffer_free``: percent of the buffer still free (100 without a limit)."""
        total = int(self._knobs()["buffer_bytes"])
        if total == 0:
            return 100.0
        with self._cond:
            return max(0.0, 100.0 * (total - self._used()) / total)

    # --- HTTP side -----------------------------------------------------------------------------------------------
    def listing(self) -> list[str]:
        with self._cond:
            return list(self._files)

    def read(self, path: str) -> tuple[memoryview, int] | None:
        """The bytes written so far (a view, no copy) and the mtime in ns, or None when ``path`` is not stored."""
        now = time.time()
        with self._cond:
            stored = self._files.get(path)
            if stored is None:
                return None
            self._note_complete(stored, now)
            return memoryview(stored.content)[:stored.size(now)], stored.mtime_ns(now)

    def delete(self, path: str) -> bool:
        with self._cond:
            stored = self._files.pop(path, None)
            if stored is None:
                return False
            self._mark(stored, wiped=False)
            self._cond.notify_all()
        return True

    def wipe(self, *, reboot: bool) -> int:
        """Drop every file (reboot: ``wiped``; filewriter ``clear``: ``deleted``); the number dropped."""
        with self._cond:
            gone = list(self._files.values())
            self._files.clear()
            for stored in gone:
                self._mark(stored, wiped=reboot)
            self._cond.notify_all()
        return len(gone)

    def created(self) -> list[dict[str, Any]]:
        now = time.time()
        with self._cond:
            for stored in self._files.values():
                self._note_complete(stored, now)
            return [record.value() for record in self._created]

    @staticmethod
    def _note_complete(stored: StoredFile, now: float) -> None:
        stored.record.complete = stored.complete(now)

    @classmethod
    def _mark(cls, stored: StoredFile, *, wiped: bool) -> None:
        cls._note_complete(stored, time.time())
        record = stored.record
        record.wiped = wiped
        record.deleted = not wiped
        record.deleted_at = time.time()
