"""The ``polling`` event source: for network shares (NFS, SMB, GPFS written from another node) where no file-system
notification ever fires.

A file is reported once its size, mtime (ns) and inode stayed the same for ``settle_s``; a file still growing is
never reported; one rewritten or replaced after it was reported is reported again. Idle cost stays low on a big
tree because files are not all looked at every period: every ``interval_s`` only the directories are (a new,
removed or renamed entry changes a directory's mtime; only new or replaced names of such a directory are looked
at), plus the files not yet settled; every file is looked at again once per ``full_scan_s``, spread evenly over
that time, which finds files rewritten in place. Memory is one small record per known file (its name and
signature, measured in ``benchmarks/polling.py``); the start-up scan and every sweep proceed in bounded slices
per ``poll``, so a tree of 100,000 files never blocks the source thread.
"""
from __future__ import annotations

import logging
import os
import stat as _stat
import time
from collections import deque
from typing import Iterator

from pydantic import Field

from hidra_core import EventSource, FileEvent

from hidra_watchdog._tree import Settler, Tree, TreeOptions, signature

__all__ = ["PollingConfig", "PollingEventSource"]

log = logging.getLogger(__name__)

_BUDGET = 2000  # file-system calls per poll: bounds the time one poll takes on any tree
_BATCH = 1000
_SWEEP_SLICE = 200  # files a sweep looks at per wake-up, so that idle wake-ups stay rare


class PollingConfig(TreeOptions):
    """Options of the ``polling`` source (``source: {type: polling, polling: {...}}``)."""

    settle_s: float = Field(2.0, gt=0, description=(
        "a file is sent once its size and mtime have not changed for this long; on NFS it must exceed the "
        "client's attribute cache time (mount with actimeo=1, or raise this)"))
    interval_s: float = Field(0.5, gt=0, description=(
        "how often directories are checked for new, removed or renamed entries, and unsettled files looked at"))
    full_scan_s: float = Field(60.0, gt=0, description=(
        "every file is looked at again within this time (spread evenly), to find files rewritten in place"))


class _Dir:
    """What the source knows of one directory: its identity at the last listing and its entries' signatures."""

    __slots__ = ("files", "hot_until", "key", "subdirs")

    def __init__(self) -> None:
        self.key: tuple[int, int] | None = None  # (inode, mtime_ns)
        self.files: dict[str, tuple[int, int, int]] = {}
        self.subdirs: set[str] = set()
        self.hot_until = 0.0


class _Lane:
    """A queue of directory listings and the one in progress (a generator: one step per entry)."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, bool, bool]] = deque()  # (rel, deep, quiet)
        self.queued: set[str] = set()
        self.current: Iterator[None] | None = None

    def add(self, rel: str, deep: bool, quiet: bool = False) -> None:
        if rel not in self.queued:
            self.queued.add(rel)
            self.queue.append((rel, deep, quiet))

    def clear(self) -> None:
        self.queue.clear()
        self.queued.clear()
        self.current = None

    @property
    def idle(self) -> bool:
        return self.current is None and not self.queue


class PollingEventSource(EventSource):
    config_class = PollingConfig
    default_fetcher = "file"

    def __init__(self, config: PollingConfig) -> None:
        super().__init__(config)
        self._tree = Tree(config)
        self._settler = Settler(self._tree, config.settle_s, config.interval_s)
        self._dirs: dict[str, _Dir] = {}
        self._changes, self._sweep = _Lane(), _Lane()
        self._known = 0  # files in self._dirs, for the sweep's pace
        self._tokens = 0.0
        self._last = self._next_check = self._next_sweep = 0.0
        self._out: list[FileEvent] = []
        self._gone = False
        self.vanished = 0  # times the root disappeared

    @property
    def root(self) -> str:
        return self._tree.root

    def scan(self, rel: str) -> Iterator[FileEvent]:
        return self._tree.walk(rel)

    def open(self, context: object) -> None:
        now = time.monotonic()
        self._last, self._next_check = now, now + self.config.interval_s
        self._next_sweep = now  # NOTE: sweeps run back to back, each paced to last full_scan_s: a steady cost
        self._dirs[""] = _Dir()
        self._changes.add("", True, quiet=not self.config.scan_at_start)
        if not self.config.scan_at_start:
            # NOTE: what exists now is only remembered, before open returns: a file made after it is new
            while not self._changes.idle:
                self._run(self._changes, _BUDGET)

    def close(self) -> None:
        self._changes.clear()
        self._sweep.clear()

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            due = self._work()
            now = time.monotonic()
            if self._out or due <= now or now >= deadline:
                out, self._out = self._out[:_BATCH], self._out[_BATCH:]
                return out
            time.sleep(min(due, deadline) - now)

    def _work(self) -> float:
        """One slice of work; returns when more is due (now or earlier: more work waits)."""
        now = time.monotonic()
        self._tokens = min(self._tokens + (now - self._last) * self._rate(), 10 * _SWEEP_SLICE + self._rate())
        self._last = now
        if now >= self._next_check:
            self._next_check = now + self.config.interval_s
            self._check_dirs(now)
        budget = _BUDGET - self._run(self._changes, _BUDGET)
        for rel, name, st in self._settler.settled(budget):
            d = self._dirs.get(rel)
            if d is not None and name in d.files:
                d.files[name] = signature(st)  # NOTE: what was reported; a later sweep compares with it
            event = self._tree.event(rel, name, st)
            if event is not None:
                self._out.append(event)
        if self._sweep.idle and now >= self._next_sweep and not self._gone:
            self._next_sweep = now  # NOTE: sweeps run back to back, each paced to last full_scan_s: a steady cost
            for rel in self._dirs:
                self._sweep.add(rel, True)
        if self._tokens >= _SWEEP_SLICE or (self._tokens > 0 and self._sweep.current is not None):
            self._tokens -= self._run(self._sweep, int(min(self._tokens, _BUDGET)))
        return self._next_due(now)

    def _rate(self) -> float:
        return max(self._known + len(self._dirs), _SWEEP_SLICE) / self.config.full_scan_s

    def _next_due(self, now: float) -> float:
        if len(self._out) >= _BATCH or not self._changes.idle:
            return now
        due = [self._next_check]
        if self._sweep.idle:
            due.append(self._next_sweep)
        else:
            due.append(now + max(0.0, _SWEEP_SLICE - self._tokens) / self._rate())
        settle = self._settler.next_due()
        if settle is not None:
            due.append(settle)
        return min(due)

    def _run(self, lane: _Lane, budget: int) -> int:
        """Advance ``lane`` by up to ``budget`` entries; return how many it took."""
        used = 0
        while used < budget:
            if lane.current is None:
                if not lane.queue:
                    break
                rel, deep, quiet = lane.queue.popleft()
                lane.queued.discard(rel)
                lane.current = self._list(rel, deep, quiet)
            try:
                next(lane.current)
                used += 1
            except StopIteration:
                lane.current = None
                used += 1
        return used

    def _check_dirs(self, now: float) -> None:
        """Queue a listing of every directory whose inode or mtime changed (or changed recently)."""
        if "" not in self._dirs:
            if os.path.isdir(self._tree.root):
                log.warning("source directory %s is back: scanning it", self._tree.root)
                self._gone = False
                self._dirs[""] = _Dir()
                self._changes.add("", True)
            return
        for rel, d in list(self._dirs.items()):
            try:
                st = os.lstat(self._tree.abs(rel))
            except OSError:
                if rel == "":
                    self._root_gone()
                    return
                continue  # its parent's listing forgets it
            if (st.st_ino, st.st_mtime_ns) != d.key or now < d.hot_until:
                self._changes.add(rel, False)

    def _root_gone(self) -> None:
        self.vanished += 1
        self._gone = True
        log.warning("source directory %s vanished; waiting for it to come back", self._tree.root)
        self._forget("")
        self._changes.clear()
        self._sweep.clear()

    def _forget(self, rel: str) -> None:
        for key in [k for k in self._dirs if rel == "" or k == rel or k.startswith(rel + "/")]:
            self._known -= len(self._dirs.pop(key).files)
        self._settler.discard_below(rel)

    def _list(self, rel: str, deep: bool, quiet: bool) -> Iterator[None]:
        """List one directory, one step per entry: new or replaced names (every name when ``deep``) are looked at;
        a changed file goes to the settler (``quiet``: only remembered); gone names and directories are forgotten."""
        d = self._dirs.get(rel)
        if d is None:
            return
        path = self._tree.abs(rel)
        try:
            st = os.lstat(path)
            entries = os.scandir(path)
        except OSError as exc:
            log.debug("not listed: %s", exc)
            return
        first = d.key is None
        d.key = (st.st_ino, st.st_mtime_ns)  # NOTE: before listing: a change meanwhile is seen at the next check
        files: set[str] = set()
        dirs: set[str] = set()
        changed = False
        with entries:
            for entry in entries:
                yield
                if entry.is_dir(follow_symlinks=False):
                    dirs.add(entry.name)
                    changed |= self._subdir(d, rel, entry.name, quiet)
                elif not self._tree.ignored(entry.name):
                    files.add(entry.name)
                    changed |= self._file(d, rel, entry, deep, quiet)
        for name in d.files.keys() - files:
            del d.files[name]
            self._known -= 1
            changed = True
        for name in d.subdirs - dirs:
            d.subdirs.discard(name)
            self._forget(f"{rel}/{name}" if rel else name)
        if changed and not first:
            # NOTE: a file system with coarse directory times (1 s) shows no new mtime for a second change within
            # the same tick: a directory that changed is listed again at every check for settle_s.
            d.hot_until = time.monotonic() + self.config.settle_s

    def _subdir(self, d: _Dir, rel: str, name: str, quiet: bool) -> bool:
        if not self.config.recursive or name in d.subdirs:
            return False
        child = f"{rel}/{name}" if rel else name
        d.subdirs.add(name)
        self._dirs[child] = _Dir()
        self._changes.add(child, True, quiet)
        return True

    def _file(self, d: _Dir, rel: str, entry: os.DirEntry[str], deep: bool, quiet: bool) -> bool:
        old = d.files.get(entry.name)
        try:
            if old is not None and not deep and entry.inode() == old[0]:
                return False
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return False
        sig = signature(st)
        if sig == old:
            return False
        if old is None:
            self._known += 1
        d.files[entry.name] = sig
        if quiet:
            return True
        if _stat.S_ISLNK(st.st_mode):
            event = self._tree.event(rel, entry.name, st)
            if event is not None:
                self._out.append(event)
        elif _stat.S_ISREG(st.st_mode):
            self._settler.add(rel, entry.name, st)
        return True
