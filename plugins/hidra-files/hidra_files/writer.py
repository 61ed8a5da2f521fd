"""The ``files`` writer: plain files below the receiver's root, made durable in groups before confirmation."""
from __future__ import annotations

import ctypes
import logging
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from hidra_core import SafeTree, Writer, WriteTarget

__all__ = ["FilesWriter", "FilesWriterConfig"]

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_NAME_MAX = 255
_TEMP_NAME = re.compile(r".+\.[0-9a-f]{12}\.part\Z", re.S)


class FilesWriterConfig(BaseModel):
    """Options of the ``files`` writer (``receiver: {files: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fsync: bool = Field(True, description="make each file durable (data and directory entry) before confirming")
    preserve_mtime: bool = Field(True, description="give the stored file the source's modification time")
    clean_stale_parts: bool = Field(
        True, description="at start-up, delete temp files (*.<12 hex>.part) older than the start: what a crashed"
        " receiver left. Turn off when several receivers write into the same target tree")
    group_sync_min: int = Field(
        4, ge=2, description="commit batches of at least this many files with one syncfs() instead of fsyncs")


@dataclass
class _Open:
    fd: int
    directory: str
    temp: str
    final: str
    mtime: float | None


def _shorten(name: str, limit: int) -> str:
    """``name`` cut to at most ``limit`` bytes in the file system's encoding, never inside a character."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    return os.fsdecode(raw[:limit].decode("utf-8", "ignore").encode("utf-8", "surrogateescape"))


def _syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs failed: {os.strerror(err)}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesWriter(Writer):
    config_class = FilesWriterConfig

    def __init__(self, config: FilesWriterConfig, *, target: str) -> None:
        super().__init__(config, target=target)
        self._tree = SafeTree(target)

    def open(self, item: WriteTarget) -> _Open:
        directory = self._tree.directory(item.relative_parts)
        suffix = f".{secrets.token_hex(6)}.part"
        temp = os.path.join(directory, _shorten(item.filename, _NAME_MAX - len(suffix)) + suffix)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        mtime = item.metadata.get("file_mod_time")
        return _Open(fd, directory, temp, os.path.join(directory, item.filename),
                     mtime if isinstance(mtime, (int, float)) and not isinstance(mtime, bool) else None)

    def write(self, handle: _Open, data: Any) -> None:
        view = memoryview(data)
        while view.nbytes:
            written = os.write(handle.fd, view)
            view = view[written:]

    def close(self, handle: _Open) -> None:
        if self.config.preserve_mtime and handle.mtime is not None:
            os.utime(handle.fd, (handle.mtime, handle.mtime))

    def commit(self, handles: Sequence[_Open]) -> None:
        # NOTE: durable before visible: file data is synced, then renamed, then the directory entries are
        # synced. Large batches use one syncfs() per step: a journal commit per file would cap small files
        # near 2,500 files/s on this class of machine, one per batch does not.
        sync = self.config.fsync
        grouped = sync and len(handles) >= self.config.group_sync_min
        try:
            if sync and not grouped:
                for h in handles:
                    os.fsync(h.fd)
            elif grouped:
                _syncfs(handles[0].fd)
        finally:
            for h in handles:
                self._close_fd(h)
        for h in handles:
            os.rename(h.temp, h.final)
        if not sync:
            return
        directories = {h.directory for h in handles}
        if grouped and len(directories) >= self.config.group_sync_min:
            root_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _syncfs(root_fd)
            finally:
                os.close(root_fd)
        else:
            for directory in directories:
                _fsync_dir(directory)

    def abort(self, handle: _Open) -> None:
        self._close_fd(handle)
        try:
            os.unlink(handle.temp)
        except FileNotFoundError:
            pass

    def cleanup(self, before: float) -> int:
        if not self.config.clean_stale_parts:
            return 0
        removed = 0
        for directory, _dirs, files in os.walk(self._tree.root):
            for name in files:
                if not _TEMP_NAME.match(name):
                    continue
                path = os.path.join(directory, name)
                try:
                    # NOTE: ctime, not mtime: close() may set mtime to the source's, far in the past.
                    if os.lstat(path).st_ctime < before:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
        if removed:
            log.info("removed %d temp files left by an earlier receiver below %s", removed, self._tree.root)
        return removed

    @staticmethod
    def _close_fd(handle: _Open) -> None:
        if handle.fd >= 0:
            os.close(handle.fd)
            handle.fd = -1
