"""What both sources share: the options a user knows from the ``inotify`` source, names below the root, the
symlink rule, a lazy walk of the tree, and the settle rule (unchanged size and mtime for ``settle_s``).

Names are ``str`` as ``os.scandir`` gives them: undecodable bytes as surrogate escapes, which the sender refuses
by name (logged, recorded in the ledger) exactly as it does for the ``inotify`` source.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import stat as _stat
import time
from collections import OrderedDict
from typing import Iterator

from hidra_core import FileEvent, TreeSourceConfig

__all__ = ["Settler", "Tree", "TreeOptions", "signature"]

log = logging.getLogger(__name__)


#: the inotify source's options, with the same meaning: switching sources is changing ``type``
TreeOptions = TreeSourceConfig


def signature(st: os.stat_result) -> tuple[int, int, int]:
    """What must stay the same for a file to count as settled, and changes when it is rewritten or replaced."""
    return st.st_ino, st.st_size, st.st_mtime_ns


class Tree:
    """The watched root and the rules every reported name obeys."""

    def __init__(self, options: TreeOptions) -> None:
        self.options = options
        self.root = os.path.abspath(options.path)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"source directory {self.root!r} does not exist")

    def abs(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/")) if rel else self.root

    def split(self, path: str) -> tuple[str, str] | None:
        """``(relative directory, name)`` of an absolute path strictly below the root, else None."""
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel.startswith(".." + os.sep) or rel == ".." or os.path.isabs(rel):
            return None
        head, name = os.path.split(rel)
        return head.replace(os.sep, "/"), name

    def ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.options.ignore)

    def event(self, rel: str, name: str, st: os.stat_result | None = None) -> FileEvent | None:
        """The event for a regular file or symlink ``rel/name`` (None: ignored, gone, or a refused symlink)."""
        if self.ignored(name):
            return None
        if st is None:
            try:
                st = os.lstat(self.abs(f"{rel}/{name}" if rel else name))
            except (OSError, ValueError):
                return None
        if _stat.S_ISLNK(st.st_mode):
            return self._link_event(rel, name)
        return FileEvent(self.root, rel, name) if _stat.S_ISREG(st.st_mode) else None

    def _link_event(self, rel: str, name: str) -> FileEvent | None:
        path = self.abs(f"{rel}/{name}" if rel else name)
        if not self.options.follow_symlinks:
            log.warning("skipping symlink %s (follow_symlinks is off)", path)
            return None
        real, root = os.path.realpath(path), os.path.realpath(self.root)
        if os.path.commonpath([real, root]) != root or not os.path.isfile(real):
            log.warning("skipping symlink %s: its target %s is not a regular file inside the source tree", path,
                        real)
            return None
        return FileEvent(self.root, rel, name, {"link_target": os.path.relpath(real, root).replace(os.sep, "/")})

    def walk(self, rel: str = "") -> Iterator[FileEvent]:
        """Every file below ``rel`` as an event, lazily: one directory's iterator open at a time, and only the
        directories still to visit held, so a huge tree never sits in memory."""
        pending = [rel]
        while pending:
            current = pending.pop()
            try:
                with os.scandir(self.abs(current)) as entries:
                    for entry in entries:
                        child = f"{current}/{entry.name}" if current else entry.name
                        if entry.is_dir(follow_symlinks=False):
                            if self.options.recursive:
                                pending.append(child)
                            continue
                        event = self.event(current, entry.name, _lstat(entry))
                        if event is not None:
                            yield event
            except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
                log.debug("not scanned: %s", exc)


def _lstat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None


class Settler:
    """Files waiting until their size and mtime stayed the same for ``settle_s``, looked at every ``check_s``.

    Two looks ``settle_s`` apart are needed even for an old file: a network share's clock is not ours, so a
    file's mtime says nothing about how long ago it was last written.
    """

    def __init__(self, tree: Tree, settle_s: float, check_s: float) -> None:
        self.tree = tree
        self.settle_s = settle_s
        self.check_s = check_s
        # (rel, name) -> (signature, since, next look), time.monotonic(); in the order of the next look (nearly:
        # a file looked at is queued at the end), so each poll reads only the head
        self.pending: OrderedDict[tuple[str, str], tuple[tuple[int, int, int], float, float]] = OrderedDict()

    def add(self, rel: str, name: str, st: os.stat_result) -> None:
        now = time.monotonic()
        self.pending.pop((rel, name), None)
        self.pending[(rel, name)] = (signature(st), now, now + min(self.check_s, self.settle_s))

    def discard_below(self, rel: str) -> None:
        for key in [k for k in self.pending if rel == "" or k[0] == rel or k[0].startswith(rel + "/")]:
            del self.pending[key]

    def next_due(self) -> float | None:
        return self.pending[next(iter(self.pending))][2] if self.pending else None

    def settled(self, budget: int) -> list[tuple[str, str, os.stat_result]]:
        """Look at up to ``budget`` due files; return those unchanged for ``settle_s`` (and forget them)."""
        now, out = time.monotonic(), []
        while budget > 0 and self.pending:
            key = next(iter(self.pending))
            sig, since, due = self.pending[key]
            if due > now:
                break
            del self.pending[key]
            budget -= 1
            try:
                st = os.lstat(self.tree.abs(f"{key[0]}/{key[1]}" if key[0] else key[1]))
            except OSError:
                continue  # gone before it settled: a temp file, or removed
            if signature(st) != sig:
                self.pending[key] = (signature(st), now, now + min(self.check_s, self.settle_s))
            elif now - since >= self.settle_s:
                out.append((key[0], key[1], st))
            else:
                self.pending[key] = (sig, since, min(since + self.settle_s, now + self.check_s))
        return out
