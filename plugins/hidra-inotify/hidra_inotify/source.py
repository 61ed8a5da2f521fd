"""The ``inotify`` event source: every file closed after writing or moved into a directory tree.

New subdirectories are watched and then scanned, so files created before their watch existed are not missed;
an inotify queue overflow triggers a full rescan (both counted for /metrics); files present at start-up are
reported by the first polls.
Duplicates (a file seen by a scan and an event) are harmless: the sender's ledger deduplicates.
Symlinks are skipped (with a log line) however they arrive, by a scan or moved in; with ``follow_symlinks`` a
link whose target is a regular file inside the tree is reported under the link's name.
"""
from __future__ import annotations

import fnmatch
import logging
import os
from collections import deque
from typing import Iterator

from inotify_simple import INotify, flags
from hidra_core import EventSource, FileEvent, TreeSourceConfig

__all__ = ["InotifyConfig", "InotifyEventSource"]

log = logging.getLogger(__name__)

_DIR_MASK = flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE | flags.DELETE_SELF | flags.MOVE_SELF
# NOTE: plain ints: every event is tested against several of them
_Q_OVERFLOW, _IGNORED, _MOVE_SELF, _ISDIR = (int(flags.Q_OVERFLOW), int(flags.IGNORED), int(flags.MOVE_SELF),
                                             int(flags.ISDIR))
_CREATE, _MOVED_TO, _CLOSE_WRITE = int(flags.CREATE), int(flags.MOVED_TO), int(flags.CLOSE_WRITE)
_BATCH = 1000


class InotifyConfig(TreeSourceConfig):
    """Options of the ``inotify`` source (``source: {type: inotify, inotify: {...}}``): the kernel's options of a
    watched tree, shared with the ``watchdog`` and ``polling`` sources."""


class InotifyEventSource(EventSource):
    config_class = InotifyConfig
    default_fetcher = "file"

    def __init__(self, config: InotifyConfig) -> None:
        super().__init__(config)
        self._root = os.path.abspath(config.path)
        if not os.path.isdir(self._root):
            raise FileNotFoundError(f"source directory {self._root!r} does not exist")
        self._inotify: INotify | None = None
        self._dirs: dict[int, str] = {}  # watch descriptor -> relative directory ("" for the root)
        self._inodes: dict[int, int] = {}  # watch descriptor -> inode, to tell a moved-away directory
        self._scans: deque[Iterator[FileEvent]] = deque()
        self.overflows = 0
        for name in ("overflows", "rescans"):  # NOTE: at 0 from the start, so that a dashboard shows them
            self.counters.add(name, 0)

    @property
    def root(self) -> str:
        return self._root

    def open(self, context: object) -> None:
        self._inotify = INotify()
        self._watch_tree("")
        if self.config.scan_at_start:
            self._scans.append(self.scan(""))

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        assert self._inotify is not None, "open() first"
        out: list[FileEvent] = []
        wait = 0 if self._scans else timeout_ms
        for ev in self._inotify.read(timeout=wait):
            self._handle(ev, out)
        while self._scans and len(out) < _BATCH:
            try:
                out.append(next(self._scans[0]))
            except StopIteration:
                self._scans.popleft()
        return out

    def _handle(self, ev: object, out: list[FileEvent]) -> None:
        mask, wd, name = ev.mask, ev.wd, ev.name  # type: ignore[attr-defined]
        if mask & (_Q_OVERFLOW | _IGNORED | _MOVE_SELF):
            self._handle_special(mask, wd)
            return
        rel = self._dirs.get(wd)
        if rel is None or not name:
            return
        if mask & _ISDIR:
            if self.config.recursive and mask & (_CREATE | _MOVED_TO):
                child = f"{rel}/{name}" if rel else name
                self._watch_tree(child)
                self._scans.append(self.scan(child))
        elif mask & (_CLOSE_WRITE | _MOVED_TO) and not (self.config.ignore and self._ignored(name)):
            if mask & _MOVED_TO and self._is_link(f"{rel}/{name}" if rel else name):
                event = self._link_event(rel, name)
                if event is not None:
                    out.append(event)
            else:
                out.append(FileEvent(self._root, rel, name))

    def _handle_special(self, mask: int, wd: int) -> None:
        if mask & _Q_OVERFLOW:
            self.overflows += 1
            self.counters.add("overflows")
            log.warning("inotify queue overflowed (%d so far): rescanning %s", self.overflows, self._root)
            self._watch_tree("")
            self.counters.add("rescans")
            self._scans.append(self.scan(""))
        elif mask & _IGNORED:
            self._dirs.pop(wd, None)
            self._inodes.pop(wd, None)
        else:
            self._forget_if_moved_away(wd)

    def _forget_if_moved_away(self, wd: int) -> None:
        """A watched directory was renamed: unless a MOVED_TO inside the tree re-mapped it, stop watching it."""
        rel = self._dirs.get(wd)
        if rel is None or rel == "":
            return
        try:
            if os.stat(self._abs(rel)).st_ino == self._inodes.get(wd):
                return
        except OSError:
            pass
        assert self._inotify is not None
        for other, path in list(self._dirs.items()):
            if path == rel or path.startswith(rel + "/"):
                self._dirs.pop(other, None)
                self._inodes.pop(other, None)
                try:
                    self._inotify.rm_watch(other)
                except OSError:
                    pass

    def _is_link(self, rel: str) -> bool:
        try:
            return os.path.islink(self._abs(rel))
        except ValueError:  # NOTE: a NUL cannot be in a name the kernel reported; be safe anyway
            return False

    def _link_event(self, rel: str, name: str) -> FileEvent | None:
        """The event for a symlink: None (logged) unless followed and pointing at a file inside the tree."""
        path = self._abs(f"{rel}/{name}" if rel else name)
        if not self.config.follow_symlinks:
            log.warning("skipping symlink %s (follow_symlinks is off)", path)
            return None
        real, root = os.path.realpath(path), os.path.realpath(self._root)
        if os.path.commonpath([real, root]) != root or not os.path.isfile(real):
            log.warning("skipping symlink %s: its target %s is not a regular file inside the source tree", path,
                        real)
            return None
        return FileEvent(self._root, rel, name, {"link_target": os.path.relpath(real, root).replace(os.sep, "/")})

    def _ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.config.ignore)

    def _abs(self, rel: str) -> str:
        return os.path.join(self._root, rel) if rel else self._root  # NOTE: rel is "/"-separated already

    def _watch_tree(self, rel: str) -> None:
        """Watch ``rel`` and, when recursive, every directory below it (watch first, then list)."""
        assert self._inotify is not None
        pending = [rel]
        while pending:
            current = pending.pop()
            try:
                wd = self._inotify.add_watch(self._abs(current), _DIR_MASK)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("cannot watch %s: %s (raise fs.inotify.max_user_watches?)", self._abs(current), exc)
                continue
            self._dirs[wd] = current
            try:
                self._inodes[wd] = os.stat(self._abs(current)).st_ino
            except OSError:
                continue
            if not self.config.recursive:
                continue
            try:
                with os.scandir(self._abs(current)) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(f"{current}/{entry.name}" if current else entry.name)
            except (FileNotFoundError, NotADirectoryError):
                continue

    def scan(self, rel: str) -> Iterator[FileEvent]:
        """Every regular file below ``rel``, lazily, so a huge tree never sits in memory at once (the start-up
        scan, new directories, rescans, and ``hidra backfill`` from a thread of its own)."""
        pending = [rel]
        while pending:
            current = pending.pop()
            try:
                with os.scandir(self._abs(current)) as it:
                    entries = list(it)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                child = f"{current}/{entry.name}" if current else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if self.config.recursive:
                        pending.append(child)
                elif self._ignored(entry.name):
                    continue
                elif entry.is_symlink():
                    event = self._link_event(current, entry.name)
                    if event is not None:
                        yield event
                elif entry.is_file(follow_symlinks=False):
                    yield FileEvent(self._root, current, entry.name)
