"""The ``watchdog`` event source: the platform's native observer through the ``watchdog`` package (inotify on
Linux, FSEvents on macOS, ReadDirectoryChangesW on Windows, kqueue on BSD), for detector PCs that are not Linux.

``watchdog`` because it is the maintained cross-platform wrapper of exactly these APIs (the alternatives cover one
platform each, or poll). A file is reported when its writer closes it (Linux: inotify's close-after-write) or when
it is moved into the tree; where the observer reports no close (macOS, Windows, BSD), or with
``wait_for_close: false``, a created or modified file is reported once its size and mtime have not changed for
``settle_s``, as the ``polling`` source does. Files present at start-up, in new directories, or after an overflow
are found by a lazy scan. The observer's thread hands events to ``poll`` through a bounded queue: when it is full
the tree is rescanned (logged, counted in ``overflows``), and so it is when the kernel's inotify queue overflowed;
no event is lost silently. A root directory that disappears is watched again when it comes back, and scanned.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any, Iterator

from pydantic import Field
from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer

from hidra_core import EventSource, FileEvent

from hidra_watchdog._tree import Settler, Tree, TreeOptions

try:
    from watchdog.observers.inotify import InotifyObserver
except ImportError:  # NOTE: not Linux
    InotifyObserver = None  # type: ignore[assignment,misc]

__all__ = ["WatchdogConfig", "WatchdogEventSource"]

log = logging.getLogger(__name__)

_BATCH = 1000
_ROOT_CHECK_S = 0.5
_STRUCTURE = [DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileMovedEvent]
_INOTIFY_LOGGER = "watchdog.observers.inotify_c"


class WatchdogConfig(TreeOptions):
    """Options of the ``watchdog`` source (``source: {type: watchdog, watchdog: {...}}``)."""

    wait_for_close: bool | None = Field(None, description=(
        "null: send a file when its writer closes it where the observer reports that (Linux), else once it is "
        "settled; false: always once settled (size and mtime unchanged for settle_s); true: refuse to start "
        "where the observer reports no close"))
    settle_s: float = Field(2.0, gt=0, description=(
        "without close events: a file is sent once its size and mtime have not changed for this long"))
    queue_size: int = Field(100_000, ge=1, description=(
        "events held between the observer thread and the sender; when full, the tree is rescanned (logged and "
        "counted) instead of losing events"))


class _Handler(FileSystemEventHandler):
    def __init__(self, source: WatchdogEventSource) -> None:
        self.source = source

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.source._push(event)


class _OverflowAlarm(logging.Filter):
    """``watchdog`` rebuilds its watches after an inotify queue overflow but tells its handlers nothing: its log
    line is the only sign, so it triggers a rescan here."""

    def __init__(self, source: WatchdogEventSource) -> None:
        super().__init__()
        self.source = source

    def filter(self, record: logging.LogRecord) -> bool:
        if "overflow" in str(record.msg):
            self.source._overflow()
        return True


class WatchdogEventSource(EventSource):
    config_class = WatchdogConfig
    default_fetcher = "file"

    def __init__(self, config: WatchdogConfig) -> None:
        super().__init__(config)
        self._tree = Tree(config)
        native = InotifyObserver is not None and Observer is InotifyObserver
        if config.wait_for_close and not native:
            raise ValueError("wait_for_close: this platform's observer reports no file closes; use false or null")
        self._on_close = native if config.wait_for_close is None else config.wait_for_close
        self._settler = Settler(self._tree, config.settle_s, min(0.25, config.settle_s))
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, str]] = deque()
        self._queued: set[tuple[str, str]] = set()
        self._overflowed = False
        self._wake = threading.Event()
        self._scans: deque[Iterator[FileEvent]] = deque()
        self._observer: Any = None
        self._watch: Any = None
        self._watched: tuple[int, int] | None = None
        self._next_root_check = 0.0
        self._alarm = _OverflowAlarm(self)
        self.overflows = 0
        self.vanished = 0
        for name in ("overflows", "rescans"):  # NOTE: at 0 from the start, so that a dashboard shows them
            self.counters.add(name, 0)

    @property
    def root(self) -> str:
        return self._tree.root

    def scan(self, rel: str) -> Iterator[FileEvent]:
        return self._tree.walk(rel)

    def open(self, context: object) -> None:
        native = InotifyObserver is not None and Observer is InotifyObserver
        # NOTE: full events: a file moved in from outside the tree is a move (complete), not a create.
        self._observer = InotifyObserver(generate_full_events=True) if native else Observer()
        self._observer.start()
        logging.getLogger(_INOTIFY_LOGGER).addFilter(self._alarm)
        self._schedule()
        if self.config.scan_at_start:
            self._scans.append(self._tree.walk())

    def close(self) -> None:
        logging.getLogger(_INOTIFY_LOGGER).removeFilter(self._alarm)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(10)
            self._observer = None
        self._watch = None

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        assert self._observer is not None, "open() first"
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            out = self._drain()
            while self._scans and len(out) < _BATCH:
                try:
                    out.append(next(self._scans[0]))
                except StopIteration:
                    self._scans.popleft()
            out += [e for rel, name, st in self._settler.settled(_BATCH)
                    if (e := self._tree.event(rel, name, st)) is not None]
            now = time.monotonic()
            if out or self._scans or now >= deadline:
                return out
            due = min(deadline, self._next_root_check, self._settler.next_due() or deadline)
            self._wake.wait(max(0.0, due - now))
            self._wake.clear()

    # -- observer thread -----------------------------------------------------------------------------------

    def _push(self, event: FileSystemEvent) -> None:
        item = self._classify(event)
        if item is None:
            return
        with self._lock:
            if item in self._queued:
                return
            if len(self._queue) >= self.config.queue_size:
                self._overflowed = True
            else:
                self._queue.append(item)
                self._queued.add(item)
        self._wake.set()

    def _overflow(self) -> None:
        with self._lock:
            self._overflowed = True
        self._wake.set()

    def _classify(self, event: FileSystemEvent) -> tuple[str, str] | None:
        """``(what, path)``: ``file`` to report, ``settle`` to report once settled, ``dir`` to scan, ``root``."""
        src, dest = os.fsdecode(event.src_path), os.fsdecode(event.dest_path)
        if isinstance(event, (DirDeletedEvent, DirMovedEvent)) and src == self._tree.root:
            return ("root", "")
        if isinstance(event, FileMovedEvent):
            return ("file", dest) if dest else None
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            path = dest or src
            return ("dir", path) if path and self.config.recursive else None
        if isinstance(event, FileClosedEvent) and self._on_close:
            return ("file", src)
        if isinstance(event, (FileCreatedEvent, FileModifiedEvent)) and not self._on_close:
            return ("settle", src)
        return None

    # -- polling thread ------------------------------------------------------------------------------------

    def _drain(self) -> list[FileEvent]:
        with self._lock:
            items, overflowed = list(self._queue), self._overflowed
            self._queue.clear()
            self._queued.clear()
            self._overflowed = False
        if overflowed:
            self.overflows += 1
            self.counters.add("overflows")
            log.warning("event queue overflowed (%d so far): rescanning %s", self.overflows, self._tree.root)
            self.counters.add("rescans")
            self._scans.append(self._tree.walk())
        now = time.monotonic()
        if now >= self._next_root_check or any(what == "root" for what, _ in items):
            self._next_root_check = now + _ROOT_CHECK_S
            self._check_root()
        out: list[FileEvent] = []
        for what, path in items:
            where = self._tree.split(path)
            if where is None or (where[0] and not self.config.recursive):
                continue
            if what == "dir":
                self._scans.append(self._tree.walk(f"{where[0]}/{where[1]}" if where[0] else where[1]))
            elif what == "settle":
                self._settle(*where)
            elif what == "file":
                event = self._tree.event(*where)
                if event is not None:
                    out.append(event)
        return out

    def _settle(self, rel: str, name: str) -> None:
        if self._tree.ignored(name):
            return
        try:
            st = os.lstat(self._tree.abs(f"{rel}/{name}" if rel else name))
        except OSError:
            return
        self._settler.add(rel, name, st)

    def _check_root(self) -> None:
        """Watch the root again when it came back (or was replaced by another directory), and scan it."""
        try:
            st = os.stat(self._tree.root)
            now = (st.st_dev, st.st_ino) if os.path.isdir(self._tree.root) else None
        except OSError:
            now = None
        if now == self._watched:
            return
        if self._watched is not None:
            self.vanished += 1
            log.warning("source directory %s vanished or was replaced", self._tree.root)
            self._unschedule()
            self._settler.discard_below("")
        if now is not None:
            if self._schedule():
                log.warning("source directory %s is back: watching and scanning it", self._tree.root)
                self._scans.append(self._tree.walk())

    def _schedule(self) -> bool:
        events: list[type[FileSystemEvent]] = [*_STRUCTURE, FileClosedEvent] if self._on_close else \
            [*_STRUCTURE, FileCreatedEvent, FileModifiedEvent]
        try:
            st = os.stat(self._tree.root)
            self._watch = self._observer.schedule(_Handler(self), self._tree.root, recursive=self.config.recursive,
                                                  event_filter=events)
        except OSError as exc:
            log.warning("cannot watch %s: %s", self._tree.root, exc)
            return False
        self._watched = (st.st_dev, st.st_ino)
        return True

    def _unschedule(self) -> None:
        if self._watch is not None:
            try:
                self._observer.unschedule(self._watch)
            except (KeyError, OSError) as exc:
                log.debug("unscheduling the old watch: %s", exc)
            self._watch = None
        self._watched = None
