"""The ``files`` writer: plain files below the receiver's root, made durable in groups before confirmation.

An unfinished file has no name: it is created with ``O_TMPFILE`` in its target directory, so a crash while it
is written leaves nothing behind. Once durable it is linked into the one reserved directory
``<root>/.hidra-partial/`` (incoming names may not use it) and renamed to its final name from there, so that
watchers of the target see ``IN_MOVED_TO`` as before (a bare link shows only ``IN_CREATE``, which inotify
watchers such as a chained HiDRA sender ignore). Clean-up looks only in the reserved directory, so no name a
user could create is ever taken for a leftover. Where the file system has no ``O_TMPFILE``, unfinished files
are written in the reserved directory itself; where a subdirectory is another mount than the root, the unnamed
file is linked to its final name directly.
"""
from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from hidra_core import PathRefused, SafeTree, Writer, WriteTarget

__all__ = ["FilesWriter", "FilesWriterConfig"]

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_PATH_MAX = 4096
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
#: 9999-12-31: later (or negative, NaN, huge) modification times are not representable everywhere
_MTIME_MAX = 253_402_300_799
_COMPARE_CHUNK = 1 << 20
_LINK_ATTEMPTS = 5
_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_RENAME_NOREPLACE = 1


class FilesWriterConfig(BaseModel):
    """Options of the ``files`` writer (``receiver: {files: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fsync: bool = Field(True, description="make each file durable (data and directory entry) before confirming")
    preserve_mtime: bool = Field(True, description="give the stored file the source's modification time")
    clean_stale_parts: bool = Field(
        True, description="at start-up, delete unfinished files older than the start in <target>/.hidra-partial/"
        " (used only where the file system has no O_TMPFILE). Turn off when several receivers share a target")
    group_sync_min: int = Field(
        4, ge=2, description="commit batches of at least this many files with one syncfs() instead of fsyncs")
    existing: Literal["backup", "overwrite"] = Field(
        "backup", description="a new version of a stored file with other content: 'backup' keeps the earlier one"
        " as <name>.~N~ (lowest free N, like cp --backup=numbered), 'overwrite' replaces it. An earlier version"
        " that the new one begins with (identical, or grown since) is replaced without a backup: nothing is lost")


@dataclass
class _Open:
    fd: int
    directory: str
    final: str
    mtime: float | None
    temp: str | None  # None: an unnamed O_TMPFILE file


def _syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs failed: {os.strerror(err)}")


def _open_unnamed(directory: str) -> int:
    return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644)


def _link_unnamed(fd: int, path: str) -> None:
    """Give the unnamed file ``fd`` the name ``path``; EEXIST rather than replace anything."""
    # NOTE: os.link() calls link(2), which would link the /proc symlink itself (EXDEV); linkat(2) with
    # AT_SYMLINK_FOLLOW links the unnamed file it points to, and needs no capability (unlike AT_EMPTY_PATH).
    source = f"/proc/self/fd/{fd}".encode()
    if _libc.linkat(_AT_FDCWD, source, _AT_FDCWD, os.fsencode(path), _AT_SYMLINK_FOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def _rename_noreplace(source: str, path: str) -> bool:
    """rename(2) that fails with EEXIST instead of replacing ``path``; False where the file system cannot."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(path), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err), path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime_of(item: WriteTarget) -> float | None:
    value = item.metadata.get("file_mod_time")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= _MTIME_MAX:
        log.warning("%s: file_mod_time %r is not a usable time; the stored file keeps its arrival time",
                    item.relative_name, value)
        return None
    return float(value)


def _starts_with(fd: int, path: str, size: int) -> bool:
    """Does the file ``fd`` begin with all ``size`` bytes of the regular file at ``path`` (sizes first)?"""
    if os.fstat(fd).st_size < size:
        return False
    other = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for offset in range(0, size, _COMPARE_CHUNK):
            length = min(_COMPARE_CHUNK, size - offset)
            if os.pread(fd, length, offset) != os.pread(other, length, offset):
                return False
        return True
    finally:
        os.close(other)


class FilesWriter(Writer):
    config_class = FilesWriterConfig

    def __init__(self, config: FilesWriterConfig, *, target: str) -> None:
        super().__init__(config, target=target)
        self._tree = SafeTree(target)
        self._warned_no_tmpfile = False

    def open(self, item: WriteTarget) -> _Open:
        if len(os.fsencode(os.path.join(self._tree.root, item.relative_name))) >= _PATH_MAX:
            raise PathRefused(f"{item.relative_name!r}: the path below {self._tree.root!r} is longer than the"
                              f" file system allows ({_PATH_MAX - 1} bytes)")
        directory = self._tree.directory(item.relative_parts)
        final = os.path.join(directory, item.filename)
        fd, temp = self._create(directory)
        return _Open(fd, directory, final, _mtime_of(item), temp)

    def _create(self, directory: str) -> tuple[int, str | None]:
        try:
            return _open_unnamed(directory), None
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            if not self._warned_no_tmpfile:
                self._warned_no_tmpfile = True
                log.warning("%s: no O_TMPFILE (%s); unfinished files go to %s", directory, exc.strerror,
                            self._tree.partial_directory())
        temp = os.path.join(self._tree.partial_directory(), secrets.token_hex(8))
        return os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), temp

    def write(self, handle: _Open, data: Any) -> None:
        view = memoryview(data)
        while view.nbytes:
            written = os.write(handle.fd, view)
            view = view[written:]

    def close(self, handle: _Open) -> None:
        if self.config.preserve_mtime and handle.mtime is not None:
            os.utime(handle.fd, (handle.mtime, handle.mtime))

    def commit(self, handles: Sequence[_Open]) -> None:
        for error in self.commit_each(handles):
            if error is not None:
                raise error

    def commit_each(self, handles: Sequence[_Open]) -> list[BaseException | None]:
        # NOTE: durable before visible: file data is synced, then linked to its name, then the directory entries
        # are synced. Large batches use one syncfs() per step: a journal commit per file would cap small files
        # near 2,500 files/s on this class of machine, one per batch does not. Each file then gets its name
        # alone, so one bad file (a directory in its place, a name too long) fails only itself.
        errors: list[BaseException | None] = [None] * len(handles)
        sync = self.config.fsync
        grouped = sync and len(handles) >= self.config.group_sync_min
        try:
            if sync:
                self._sync_data(handles, grouped, errors)
        except OSError as exc:  # syncfs failed: nothing of the batch is known to be durable
            errors = [exc] * len(handles)
        for n, h in enumerate(handles):
            if errors[n] is None:
                errors[n] = self._publish(h)
            self._close_fd(h)
        if sync:
            self._sync_directories([h for h, e in zip(handles, errors) if e is None], grouped, errors, handles)
        return errors

    @staticmethod
    def _sync_data(handles: Sequence[_Open], grouped: bool, errors: list[BaseException | None]) -> None:
        if grouped:
            _syncfs(handles[0].fd)
            return
        for n, h in enumerate(handles):
            try:
                os.fsync(h.fd)
            except OSError as exc:
                errors[n] = exc

    def _sync_directories(self, stored: list[_Open], grouped: bool, errors: list[BaseException | None],
                          handles: Sequence[_Open]) -> None:
        directories = {h.directory for h in stored}
        if grouped and len(directories) >= self.config.group_sync_min:
            root_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _syncfs(root_fd)
                return
            except OSError as exc:
                failed = {directory: exc for directory in directories}
            finally:
                os.close(root_fd)
        else:
            failed = {}
            for directory in directories:
                try:
                    _fsync_dir(directory)
                except OSError as exc:
                    failed[directory] = exc
        for n, h in enumerate(handles):
            if errors[n] is None and h.directory in failed:
                errors[n] = failed[h.directory]

    def _publish(self, handle: _Open) -> OSError | None:
        """Give a durable file its final name; the error instead of raising, so the batch goes on."""
        try:
            if handle.temp is None:
                handle.temp = self._name_unnamed(handle.fd)
            for _ in range(_LINK_ATTEMPTS):
                try:
                    self._place(handle)
                    break
                except FileExistsError:
                    if not self._make_room(handle):
                        break
            else:
                raise FileExistsError(errno.EEXIST, "re-created while being replaced", handle.final)
            if handle.temp is not None:
                os.unlink(handle.temp)
                handle.temp = None
        except OSError as exc:
            return exc
        return None

    def _name_unnamed(self, fd: int) -> str | None:
        """A name in the reserved directory for an unnamed file, or None if that is another file system."""
        temp = os.path.join(self._tree.partial_directory(), secrets.token_hex(8))
        try:
            _link_unnamed(fd, temp)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return None
        return temp

    @staticmethod
    def _place(handle: _Open) -> None:
        """Move the file to its final name, never replacing one: FileExistsError if it is taken."""
        if handle.temp is None:
            _link_unnamed(handle.fd, handle.final)
        elif _rename_noreplace(handle.temp, handle.final):
            handle.temp = None
        else:
            os.link(handle.temp, handle.final)

    def _make_room(self, handle: _Open) -> bool:
        """The final name exists: move it aside (or remove it) and say True, or False if it is this very file."""
        final = handle.final
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            return True
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory stands where the file should go", final)
        if self.config.existing == "overwrite":
            os.unlink(final)
            return True
        # NOTE: a new version that begins with all of the earlier one (a re-sent file, or one that was sent
        # while still being written and then grew) replaces it without a backup: nothing of it is lost.
        if stat.S_ISREG(st.st_mode) and _starts_with(handle.fd, final, st.st_size):
            if os.fstat(handle.fd).st_size == st.st_size:
                log.debug("%s is already stored with the same content", final)
                return False
            os.unlink(final)
            return True
        backup = self._backup(final)
        log.info("%s existed with other content: the earlier version is kept as %s", final,
                 os.path.basename(backup))
        os.unlink(final)
        return True

    @staticmethod
    def _backup(final: str) -> str:
        for n in itertools.count(1):
            backup = f"{final}.~{n}~"
            try:
                os.link(final, backup, follow_symlinks=False)
                return backup
            except FileExistsError:
                continue
        raise AssertionError("unreachable")  # pragma: no cover

    def abort(self, handle: _Open) -> None:
        self._close_fd(handle)
        if handle.temp is not None:
            try:
                os.unlink(handle.temp)
            except FileNotFoundError:
                pass
            handle.temp = None

    def cleanup(self, before: float) -> int:
        directory = os.path.join(self._tree.root, self._tree.PARTIAL_DIR)
        if not self.config.clean_stale_parts or not os.path.isdir(directory):
            return 0
        removed = 0
        for entry in os.scandir(directory):
            try:
                # NOTE: ctime, not mtime: close() may set mtime to the source's, far in the past.
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_ctime < before:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed %d unfinished files left by an earlier receiver in %s", removed, directory)
        return removed

    @staticmethod
    def _close_fd(handle: _Open) -> None:
        if handle.fd >= 0:
            os.close(handle.fd)
            handle.fd = -1
