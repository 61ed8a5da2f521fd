"""Directory descriptors of the ``files`` writer: its cache of target directories, and its own partial directory.

Files are created, linked and renamed relative to open directory descriptors, so a small file costs no path
resolution of the root's components. A cached descriptor keeps pointing at its directory wherever that goes, so
before a batch is given names each of its directories is checked once: is ``root/parts`` (checked as
``SafeTree`` does) still the directory the descriptor holds? If not, the directory there now is opened instead.

Several receivers may share one target: each ``files`` writer keeps its unfinished files in a directory of its
own, ``<root>/.hidra-partial/files-<pid>-<random>/``, flock'ed for as long as the writer lives (the lock goes
with the process, however it ends). Start-up clean-up removes only such directories whose lock it can take.
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict

from hidra_core import SafeTree

__all__ = ["CACHED_DIRS", "Dir", "DirCache", "PartialArea", "clean_dead_areas"]

log = logging.getLogger(__name__)

#: open directories kept per writer (least recently used ones are closed beyond)
CACHED_DIRS = 128
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_AREA = re.compile(r"files-\d+-[0-9a-f]{8}")
_CREATE_ATTEMPTS = 10


class Dir:
    """An open directory of the target. ``users``: handles holding it; an evicted one is closed when unused."""

    __slots__ = ("fd", "parts", "path", "users", "evicted")

    def __init__(self, fd: int, parts: tuple[str, ...], path: str, users: int) -> None:
        self.fd, self.parts, self.path, self.users, self.evicted = fd, parts, path, users, False


class DirCache:
    """``parts -> Dir``, least recently used first. ``acquire`` runs in the receiving thread, ``renew`` and
    ``release`` in the commit thread as well: the lock guards the counts, never a system call."""

    def __init__(self, tree: SafeTree, size: int = CACHED_DIRS) -> None:
        self._tree = tree
        self._size = size
        self._dirs: OrderedDict[tuple[str, ...], Dir] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, parts: tuple[str, ...]) -> Dir:
        """The directory ``root/parts`` (created if needed, ``PathRefused`` if it leads out), held once more."""
        with self._lock:
            found = self._dirs.get(parts)
            if found is not None:
                self._dirs.move_to_end(parts)
                found.users += 1
                return found
        return self._open(parts, self._tree.directory(parts), 1)

    def reopen(self, stale: Dir) -> Dir:
        """``stale`` turned out unusable (removed meanwhile): the directory at its path now, held in its place."""
        fresh = self._open(stale.parts, self._tree.directory(stale.parts), 1)
        self.release(stale)
        return fresh

    def renew(self, held: Dir, users: int) -> Dir:
        """``held`` if ``root/parts`` still leads to it; else the directory there now, which takes over the
        ``users`` holds of ``held``. ``PathRefused`` if the path now leads out of the root."""
        path = self._tree.directory(held.parts)
        try:
            if os.path.samestat(os.stat(path), os.fstat(held.fd)):
                return held
        except OSError:
            pass
        log.info("%s is no longer the directory it was; files go to the one there now", path)
        fresh = self._open(held.parts, path, users)
        for _ in range(users):
            self.release(held)
        return fresh

    def release(self, held: Dir) -> None:
        with self._lock:
            held.users -= 1
            if held.evicted and held.users == 0:
                self._close(held)

    def close(self) -> None:
        with self._lock:
            while self._dirs:
                self._retire(self._dirs.popitem(last=False)[1])

    def _open(self, parts: tuple[str, ...], path: str, users: int) -> Dir:
        fresh = Dir(os.open(path, _DIR_FLAGS), parts, path, users)
        with self._lock:
            old = self._dirs.pop(parts, None)
            if old is not None:
                self._retire(old)
            self._dirs[parts] = fresh
            while len(self._dirs) > self._size:
                self._retire(self._dirs.popitem(last=False)[1])
        return fresh

    def _retire(self, held: Dir) -> None:
        held.evicted = True
        if held.users == 0:
            self._close(held)

    @staticmethod
    def _close(held: Dir) -> None:
        if held.fd >= 0:
            os.close(held.fd)
            held.fd = -1


class PartialArea:
    """This writer's directory for unfinished files, made on first use and locked while the writer lives."""

    def __init__(self, tree: SafeTree) -> None:
        self._tree = tree
        self._fd = -1
        self.name = ""
        self.path = ""
        self._lock = threading.Lock()
        self._names = itertools.count()

    @property
    def fd(self) -> int:
        if self._fd < 0:
            with self._lock:
                if self._fd < 0:
                    self._create()
        return self._fd

    def new_name(self) -> str:
        """A name no file in the area has: the area is this writer's alone, so a counter will do."""
        return f"{next(self._names):x}"

    def _create(self) -> None:
        base = self._tree.partial_directory()
        base_fd = os.open(base, _DIR_FLAGS | os.O_NOFOLLOW)
        try:
            for _ in range(_CREATE_ATTEMPTS):
                name = f"files-{os.getpid()}-{secrets.token_hex(4)}"
                try:
                    os.mkdir(name, 0o700, dir_fd=base_fd)
                    fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=base_fd)
                except (FileExistsError, FileNotFoundError):
                    continue
                if _lock_if_still_there(fd, base_fd, name):
                    self._fd, self.name, self.path = fd, name, os.path.join(base, name)
                    return
                os.close(fd)
        finally:
            os.close(base_fd)
        raise OSError(errno.EAGAIN, "no partial directory of its own could be made", base)

    def close(self) -> None:
        """Remove the area if it is empty (else a later start-up clean-up does) and let go of its lock."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                if not os.listdir(self._fd):
                    os.rmdir(self.path)
            except OSError as exc:
                log.debug("partial directory %s kept: %s", self.path, exc)
            os.close(self._fd)
            self._fd = -1


def _lock_if_still_there(fd: int, base_fd: int, name: str) -> bool:
    """flock ``fd``; True if that worked and ``name`` is still this directory (a clean-up may have taken it
    between its mkdir and the lock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return os.path.samestat(os.stat(name, dir_fd=base_fd, follow_symlinks=False), os.fstat(fd))
    except (BlockingIOError, FileNotFoundError):
        return False


def clean_dead_areas(base: str, own: str) -> int:
    """Remove the partial directories below ``base`` whose writer is gone (their lock is free); files removed."""
    base_fd = os.open(base, _DIR_FLAGS | os.O_NOFOLLOW)
    try:
        return sum(_clean_area(base_fd, entry.name) for entry in os.scandir(base_fd)
                   if entry.name != own and _AREA.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False))
    finally:
        os.close(base_fd)


def _clean_area(base_fd: int, name: str) -> int:
    try:
        fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=base_fd)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # NOTE: its receiver is alive; its files are in progress
        removed = 0
        for leftover in os.listdir(fd):
            try:
                os.unlink(leftover, dir_fd=fd)
                removed += 1
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue
        try:
            os.rmdir(name, dir_fd=base_fd)
        except OSError as exc:
            log.warning("could not remove the partial directory %s of a stopped receiver: %s", name, exc)
        return removed
    finally:
        os.close(fd)
