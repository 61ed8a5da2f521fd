"""The ``file`` fetcher: reads local files in chunks and removes them when the kernel says so.

Files are opened below the source root one component at a time with ``O_NOFOLLOW``, so no symlink (swapped in
at any level) is ever followed, and only regular files are read. Whether a writer still has a file open is asked
of the kernel with a lease: a read lease cannot be taken while anyone has the file open for writing, a write
lease not while anyone has it open at all. Leases need file ownership or CAP_LEASE; without, a file counts as
closed once its size and times have not changed for ``settle_s``.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import stat as _stat
import sys
import threading
import time
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field

from hidra_core import Fetcher, FileEvent, FileStat, SourceChanged

__all__ = ["FileFetcher", "FileFetcherConfig"]

log = logging.getLogger(__name__)

# Chunks at least this big are read into reused buffers; smaller ones are copied by ZeroMQ anyway.
_POOLED_MIN = 256 * 1024
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# NOTE: O_NONBLOCK so that a FIFO swapped in after the event never blocks the open; it changes nothing for files.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENOTDIR)
_MAX_SETTLING = 100_000


class FileFetcherConfig(BaseModel):
    """Options of the ``file`` fetcher (``sender: {fetcher: {type: file, file: {...}}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pool_buffers: int = Field(8, ge=0, description="chunk buffers kept for reuse (each the size of a chunk); 0: none")
    settle_s: float = Field(2.0, ge=0, description=(
        "only where file leases are unavailable (files of another user without CAP_LEASE, some network file "
        "systems): a file counts as closed by its writer once its size and times have not changed for this long"))


def path_of(event: FileEvent) -> str:
    parts = event.relative_path.split("/") if event.relative_path else []
    return os.path.join(event.source_path, *parts, event.filename)


def _parts(event: FileEvent) -> list[str]:
    """Components below the source root of the file to read: a followed link's target (the event source
    checked it stays inside the tree) or the file itself."""
    target = event.extra.get("link_target") if event.extra else None
    rel = str(target) if target else "/".join(p for p in (event.relative_path, event.filename) if p)
    return [p for p in rel.split("/") if p]


def identity_of(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}:{st.st_size}:{st.st_mtime_ns}"


def _open_dir(root: str, parts: list[str]) -> int:
    """A descriptor of the directory ``parts`` below ``root``, reached without following any symlink."""
    dir_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            except NotADirectoryError:  # NOTE: what O_NOFOLLOW gives for a symlink when O_DIRECTORY is set
                if _stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, "symlink in the path", part) from None
                raise
            os.close(dir_fd)
            dir_fd = child
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


class _Opened:
    """An open regular file below the source root, and its directory (for unlinking the very same name)."""

    def __init__(self, root: str, parts: list[str]) -> None:
        self.name = parts[-1]
        self.dir_fd = _open_dir(root, parts[:-1])
        self.fd = -1
        try:
            self.fd = os.open(self.name, _FILE_FLAGS, dir_fd=self.dir_fd)
            self.stat = os.fstat(self.fd)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dir_fd = -1

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileFetcher(Fetcher):
    config_class = FileFetcherConfig

    def __init__(self, config: FileFetcherConfig) -> None:
        super().__init__(config)
        self._pool: list[bytearray] = []
        self._leases_warned = False
        self._settling: dict[str, tuple[str, float]] = {}  # path -> (identity, first seen), without leases
        _ignore_lease_breaks()

    def _buffer(self, length: int) -> bytearray | None:
        """A pooled buffer of exactly ``length`` bytes that nobody else holds any more, or None.

        NOTE: a chunk goes to ZeroMQ without a copy, and ZeroMQ keeps a reference to it until the bytes are on
        the wire; only the pool's own reference left (getrefcount: the list's and the argument's) means free.
        Fresh buffers cost a page fault per 4 KiB on first touch, a fifth of the sender's time at 1 GiB/s.
        """
        free_other = None
        for i in range(len(self._pool)):  # by index: a loop variable would add a reference of its own
            if sys.getrefcount(self._pool[i]) == 2:
                if len(self._pool[i]) == length:
                    return self._pool[i]
                free_other = i
        if len(self._pool) < self.config.pool_buffers:
            self._pool.append(bytearray(length))
            return self._pool[-1]
        if free_other is not None:  # the file sizes changed: recycle a free buffer of another size
            self._pool[free_other] = bytearray(length)
            return self._pool[free_other]
        return None

    def _open(self, event: FileEvent) -> _Opened | None:
        """The event's regular file, or None (logged) if it is gone, a symlink or not a regular file."""
        try:
            opened = _Opened(event.source_path, _parts(event))
        except OSError as exc:
            if exc.errno in _GONE:
                return None
            if exc.errno == errno.ELOOP:
                log.warning("%s is a symlink (or lies below one): not sent", path_of(event))
            else:  # no permission and the like: nothing to send, and no reason to crash
                log.warning("cannot open %s: %s", path_of(event), exc)
            return None
        if not _stat.S_ISREG(opened.stat.st_mode):
            log.warning("%s is not a regular file: not sent", path_of(event))
            opened.close()
            return None
        return opened

    def stat(self, event: FileEvent) -> FileStat | None:
        opened = self._open(event)
        if opened is None:
            return None
        with opened:
            st = opened.stat
        return FileStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, identity_of(st))

    def busy(self, event: FileEvent, stat: FileStat) -> bool:
        opened = self._open(event)
        if opened is None:
            return False  # gone: the kernel's next stat says so
        with opened:
            if identity_of(opened.stat) != stat.identity:
                return True  # written since the stat: look again later
            lease = self._lease(opened, fcntl.F_RDLCK)
            if lease is not None:
                if lease:
                    fcntl.fcntl(opened.fd, _F_SETLEASE, fcntl.F_UNLCK)
                return not lease
            return not self._settled(path_of(event), opened.stat)

    def _lease(self, opened: _Opened, kind: int) -> bool | None:
        """Take a lease: True if held, False if another process's open file forbids it, None if unavailable."""
        try:
            fcntl.fcntl(opened.fd, _F_SETLEASE, kind)
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                return False
            if not self._leases_warned:
                self._leases_warned = True
                log.warning("file leases unavailable (%s); a file counts as closed once unchanged for %.1f s",
                            exc, self.config.settle_s)
            return None

    def _settled(self, path: str, st: os.stat_result) -> bool:
        """Without leases: unchanged for ``settle_s``, judged by the file's times or by watching it."""
        now = time.time_ns()
        if now - max(st.st_mtime_ns, st.st_ctime_ns) >= self.config.settle_s * 1e9:
            self._settling.pop(path, None)
            return True
        identity = identity_of(st)
        seen = self._settling.get(path)
        if seen is None or seen[0] != identity:
            if len(self._settling) >= _MAX_SETTLING:
                self._settling.clear()
            self._settling[path] = (identity, time.monotonic())
            return False
        if time.monotonic() - seen[1] >= self.config.settle_s:
            del self._settling[path]
            return True
        return False

    def chunks(self, event: FileEvent, stat: FileStat, chunksize: int) -> Iterator[bytes | bytearray]:
        # NOTE: each chunk is read into its own fresh buffer (one kernel copy, no Python copy) rather than
        # mmap'ed: a file truncated by its writer while mapped would kill the whole sender with SIGBUS.
        opened = self._open(event)
        if opened is None:
            raise FileNotFoundError(errno.ENOENT, "vanished or not a regular file", path_of(event))
        with opened:
            fd, size = opened.fd, opened.stat.st_size
            if size != stat.size:
                raise OSError(f"{path_of(event)} changed size from {stat.size} to {size} while being sent")
            if size == 0:
                yield b""
                return
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            for offset in range(0, size, chunksize):
                length = min(chunksize, size - offset)
                buf = self._buffer(length) if length >= _POOLED_MIN else None
                if buf is None:  # pread allocates without zero-filling, unlike bytearray()
                    view = os.pread(fd, length, offset)
                    got = len(view)
                else:
                    view = memoryview(buf)
                    got = os.preadv(fd, [view], offset)
                del buf
                if got != length:
                    raise OSError(f"{path_of(event)} shrank while being sent (short read at {offset})")
                yield view
                del view  # so this chunk's buffer is free as soon as ZeroMQ lets go of it

    def remove(self, event: FileEvent, stat: FileStat) -> None:
        """Unlink the source only while holding a write lease (nobody else has it open) and only if it is still
        the version that was sent; see ``Fetcher.remove``. For a followed symlink the link is what goes."""
        opened = self._open(event)
        if opened is None:
            return
        with opened:
            lease = self._lease(opened, fcntl.F_WRLCK)
            if lease is False:
                raise SourceChanged(f"{path_of(event)} is open in another process; not removed")
            try:
                if identity_of(opened.stat) != stat.identity:
                    raise SourceChanged(f"{path_of(event)} changed after it was sent; not removed")
                if lease is None and not self._settled(path_of(event), opened.stat):
                    raise SourceChanged(f"{path_of(event)} may still be written (changed in the last "
                                        f"{self.config.settle_s} s); not removed")
                self._unlink(event, opened)
            finally:
                if lease:
                    fcntl.fcntl(opened.fd, _F_SETLEASE, fcntl.F_UNLCK)

    @staticmethod
    def _unlink(event: FileEvent, opened: _Opened) -> None:
        if event.extra.get("link_target"):
            dir_fd = _open_dir(event.source_path, [p for p in event.relative_path.split("/") if p])
            try:
                if _stat.S_ISLNK(os.stat(event.filename, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    os.unlink(event.filename, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            finally:
                os.close(dir_fd)
            return
        try:
            now = os.stat(opened.name, dir_fd=opened.dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (opened.stat.st_dev, opened.stat.st_ino):
                raise SourceChanged(f"{path_of(event)} was replaced after it was sent; not removed")
            os.unlink(opened.name, dir_fd=opened.dir_fd)
        except FileNotFoundError:
            pass


def _ignore_lease_breaks() -> None:
    """NOTE: when a process opens a file we hold a lease on, the kernel signals us with SIGIO, whose default
    action ends the process; leases are held for microseconds and released without waiting for the signal."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGIO) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGIO, signal.SIG_IGN)
