"""``hidra backfill``: a tree that is already there (files written while the sender was down) sent through the
running sender, as if its event source had just reported every file in it.

``POST /backfill`` starts a walk in a thread of its own (never the router loop's): the source's own ``scan``
names the files (its ignore patterns, recursion and symlink rule hold), the ledger is asked which of them are
already stored, and the rest go to the router through the hand-off the source uses, so they are sent, confirmed
and recorded like any other file. A file the ledger holds as confirmed or removed is never queued again, so a
backfill run again after any interruption sends only what is still missing. The walk stays at most
``MAX_PENDING`` files ahead of storage, so a million-file tree never sits in memory; ``GET /backfill`` reports
its progress.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from hidra_core.errors import HidraError
from hidra_core.sender.handoff import Handoff
from hidra_core.sender.ledger import CONFIRMED, FAILED, LOST, REFUSED, REMOVED, VANISHED, Ledger
from hidra_core.types import FileEvent

__all__ = ["Backfill", "BackfillRefused", "MAX_PENDING"]

log = logging.getLogger(__name__)

#: files queued by the backfill whose copy storage has not confirmed yet; the walk waits at this many
MAX_PENDING = 5_000
_BATCH = 500  # files looked up in the ledger at once
_CHECK_S = 0.25  # how often the ledger is asked about the pending files
_STORED = (CONFIRMED, REMOVED)
_GIVEN_UP = (FAILED, REFUSED, VANISHED, LOST)
_KEEP_PROBLEMS = 20


class BackfillRefused(HidraError):
    """``POST /backfill`` cannot start: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Count:
    files: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size


@dataclass
class Progress:
    """What ``GET /backfill`` answers; ``state``: idle, scanning, storing (the walk is over, copies are still
    awaited), finished, stopped (the sender stopped first) or failed."""

    state: str = "idle"
    path: str = ""
    started_at: float = 0.0
    found: _Count = field(default_factory=_Count)
    already: _Count = field(default_factory=_Count)  # stored before this backfill: not sent again
    queued: _Count = field(default_factory=_Count)
    stored: _Count = field(default_factory=_Count)
    problems: _Count = field(default_factory=_Count)  # failed, refused or vanished: see hidra ledger
    recent_problems: deque[str] = field(default_factory=lambda: deque(maxlen=_KEEP_PROBLEMS))
    error: str = ""

    @property
    def running(self) -> bool:
        return self.state in ("scanning", "storing")


class Backfill:
    """One backfill at a time per sender; ``start`` and ``progress`` are called from the REST thread."""

    def __init__(self, source: Any, handoff: Handoff, ledger_path: str, stop: Any) -> None:
        self.source = source
        self.handoff = handoff
        self.ledger_path = ledger_path
        self.stop = stop
        self.progress = Progress()
        self._pending: dict[str, tuple[FileEvent, int, float]] = {}  # file_id -> (event, size, queued at)
        self._checked_at = 0.0
        self._stopped = False  # the walk ended before the tree did: the sender stops
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def report(self) -> dict[str, Any]:
        """The progress as JSON values (read beside the backfill thread, which goes on changing it)."""
        p = self.progress
        counts = {name: asdict(getattr(p, name)) for name in ("found", "already", "queued", "stored", "problems")}
        return {"state": p.state, "running": p.running, "path": p.path, "started_at": p.started_at, **counts,
                "pending": len(self._pending), "recent_problems": list(p.recent_problems), "error": p.error}

    def start(self, path: Any) -> dict[str, Any]:
        """Start backfilling ``path``, or join the backfill of it that is running; ``BackfillRefused`` if not."""
        with self._lock:
            rel, shown = self._relative(path)
            if self.progress.running:
                if self.progress.path == shown:
                    return {**self.report(), "joined": True}
                raise BackfillRefused(409, f"a backfill of {self.progress.path} is running; wait for it to finish"
                                      " (GET /backfill), then start this one")
            try:
                events = self.source.scan(rel)
            except NotImplementedError as exc:
                raise BackfillRefused(409, str(exc)) from None
            self.progress = Progress(state="scanning", path=shown, started_at=time.time())
            self._pending, self._stopped = {}, False
            self._thread = threading.Thread(target=self._main, args=(events,), name="hidra-backfill", daemon=True)
            self._thread.start()
            log.info("backfill of %s started", shown)
            return {**self.report(), "joined": False}

    def _relative(self, path: Any) -> tuple[str, str]:
        """``(directory below the source's root, the path as given)``; refuses what is not a directory inside it
        (``..`` and symlinks are resolved first, so neither leads out of the tree)."""
        root = self.source.root
        if not root or not os.path.isdir(root):
            raise BackfillRefused(409, f"the {type(self.source).__name__} source has no directory tree to backfill")
        if not isinstance(path, str) or not path.strip():
            raise BackfillRefused(400, 'give the directory to backfill: {"path": "/absolute/dir"}')
        if "\0" in path or not os.path.isabs(path):
            raise BackfillRefused(400, f"path {path!r} is not an absolute path")
        real, top = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([real, top]) != top:
            raise BackfillRefused(400, f"path {path} is not inside the source's watched root {root} (resolved:"
                                  f" {real}); the sender can only send files of its own tree")
        if not os.path.isdir(real):
            raise BackfillRefused(404, f"path {path}: no such directory")
        rel = os.path.relpath(real, top)
        return ("" if rel == "." else rel.replace(os.sep, "/")), os.path.normpath(path)

    def join(self) -> None:
        """Wait for the walk to notice that the sender stops."""
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the backfill thread --------------------------------------------------------------------------

    def _main(self, events: Iterator[FileEvent]) -> None:
        p = self.progress
        book: Ledger | None = None
        try:
            # NOTE: a connection of this thread's own, beside the router's (SQLite WAL); committed before each
            # look-up so that it sees the router's latest rows
            book = Ledger(self.ledger_path, None, exclusive=False)
            self._walk(events, book)
            p.state = "storing"
            while self._pending and not self.stop.is_set():
                self.stop.wait(_CHECK_S)
                self._check(book)
            p.state = "stopped" if self._pending or self._stopped else "finished"
        except Exception as exc:
            log.exception("backfill of %s failed", p.path)
            p.state, p.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            if book is not None:
                book.close()
        log.info("backfill of %s %s: %d files found, %d stored before, %d sent and stored, %d problems", p.path,
                 p.state, p.found.files, p.already.files, p.stored.files, p.problems.files)

    def _walk(self, events: Iterator[FileEvent], book: Ledger) -> None:
        batch: list[tuple[FileEvent, int]] = []
        for event in events:
            if self.stop.is_set():
                self._stopped = True
                return
            size = _size(event)
            if size is None:
                continue  # NOTE: gone between the listing and its stat
            self.progress.found.add(size)
            batch.append((event, size))
            if len(batch) >= _BATCH:
                self._offer(batch, book)
                batch = []
        self._offer(batch, book)

    def _offer(self, batch: list[tuple[FileEvent, int]], book: Ledger) -> None:
        """Queue the files of ``batch`` the ledger does not hold as stored, once there is room."""
        book.commit()
        known = book.states([event.file_id for event, _size in batch if _sendable(event)])
        fresh = []
        for event, size in batch:
            row = known.get(event.file_id)
            if row is not None and row[0] in _STORED:
                self.progress.already.add(size)
            else:
                fresh.append((event, size))
        while fresh and len(self._pending) + len(fresh) > MAX_PENDING and not self.stop.is_set():
            self.stop.wait(_CHECK_S)
            self._check(book)
        if self.stop.is_set():
            self._stopped = True
            return
        now = time.time()
        for event, size in fresh:
            self.progress.queued.add(size)
            if _sendable(event):
                self._pending[event.file_id] = (event, size, now)
            else:  # NOTE: the router refuses it (logged, and listed by hidra ledger under its escaped name)
                self._problem(event.file_id.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
                              size, "name is not valid UTF-8")
        if fresh:
            self.handoff.put([event for event, _size in fresh])
        if now >= self._checked_at + _CHECK_S:
            self._check(book)  # NOTE: so that the progress moves while a long walk goes on

    def _check(self, book: Ledger) -> None:
        """Move the pending files that storage confirmed, or that ended otherwise, to their counts."""
        self._checked_at = time.time()
        book.commit()
        rows = book.states(list(self._pending))
        for fid, (event, size, queued_at) in list(self._pending.items()):
            row = rows.get(fid)
            if row is not None and row[0] in _STORED:
                self.progress.stored.add(size)
            elif row is not None and row[0] in _GIVEN_UP and row[1] >= queued_at:
                self._problem(fid, size, row[2] or "")
            elif row is None and _size(event) is None:  # NOTE: the router forgets a file gone before its send
                self._problem(fid, size, "vanished before it was sent")
            else:
                continue
            del self._pending[fid]

    def _problem(self, fid: str, size: int, reason: str) -> None:
        self.progress.problems.add(size)
        self.progress.recent_problems.append(f"{fid}: {reason}")


def _sendable(event: FileEvent) -> bool:
    try:
        event.file_id.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _size(event: FileEvent) -> int | None:
    try:
        return os.stat(os.path.join(event.source_path, event.relative_path, event.filename)).st_size
    except (OSError, ValueError):
        return None
