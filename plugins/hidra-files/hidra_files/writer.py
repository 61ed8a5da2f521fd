"""The ``files`` writer: plain files below the receiver's root, made durable in groups before confirmation.

An unfinished file has no name: it is created with ``O_TMPFILE`` in its target directory, so a crash while it
is written leaves nothing behind. Once durable it is linked into the writer's own partial directory
``<root>/.hidra-partial/files-<pid>-<random>/`` (incoming names may not use ``.hidra-partial``) and renamed to its
final name from there, so that watchers of the target see ``IN_MOVED_TO`` as before (a bare link shows only
``IN_CREATE``, which inotify watchers such as a chained HiDRA sender ignore). Clean-up looks only in the reserved
directory, and there only in partial directories whose writer is gone (see ``hidra_files.dirs``), so neither a
user's file nor another running receiver's is ever taken for a leftover. Where the file system has no
``O_TMPFILE``, unfinished files are written in the partial directory itself; where a subdirectory is another mount
than the root, the unnamed file is linked to its final name directly. All of it works on open directory
descriptors (``hidra_files.dirs.DirCache``): no path below the root is resolved again for each file.
"""
from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from hidra_core import PathRefused, SafeTree, Writer, WriteTarget

from hidra_files.dirs import Dir, DirCache, PartialArea, clean_dead_areas

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
_AT_EMPTY_PATH = 0x1000
_RENAME_NOREPLACE = 1


class FilesWriterConfig(BaseModel):
    """Options of the ``files`` writer (``receiver: {files: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fsync: bool = Field(True, description="make each file durable (data and directory entry) before confirming")
    preserve_mtime: bool = Field(True, description="give the stored file the source's modification time")
    clean_stale_parts: bool = Field(
        True, description="at start-up, delete the unfinished files of receivers that are no longer running from"
        " <target>/.hidra-partial/ (each running receiver keeps its own locked subdirectory there, so receivers"
        " sharing a target never delete each other's files)")
    group_sync_min: int = Field(
        4, ge=2, description="commit batches of at least this many files with one syncfs() instead of fsyncs")
    existing: Literal["backup", "overwrite"] = Field(
        "backup", description="a new version of a stored file with other content: 'backup' keeps the earlier one"
        " as <name>.~N~ (lowest free N, like cp --backup=numbered), 'overwrite' replaces it. An earlier version"
        " that the new one begins with (identical, or grown since) is replaced without a backup: nothing is lost")


@dataclass
class _Open:
    fd: int
    directory: Dir | None  # None once committed or aborted
    filename: str
    mtime: float | None
    temp: str | None  # its name in the writer's partial directory; None: an unnamed O_TMPFILE file

    @property
    def final(self) -> str:
        return os.path.join(self.directory.path if self.directory is not None else "?", self.filename)


def _syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs failed: {os.strerror(err)}")


def _open_unnamed(dir_fd: int) -> int:
    return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)


_empty_path_links = [True]  # NOTE: cleared once the kernel says this process may not link by descriptor


def _link_unnamed(fd: int, dir_fd: int, name: str) -> None:
    """Give the unnamed file ``fd`` the name ``name`` in ``dir_fd``; EEXIST rather than replace anything."""
    # NOTE: AT_EMPTY_PATH links the descriptor itself (needs CAP_DAC_READ_SEARCH, or Linux >= 6.10 for the
    # file's opener; ENOENT otherwise). The fallback: os.link() calls link(2), which would link the /proc
    # symlink itself (EXDEV); linkat(2) with AT_SYMLINK_FOLLOW links the unnamed file it points to.
    target = os.fsencode(name)
    if _empty_path_links[0]:
        if _libc.linkat(fd, b"", dir_fd, target, _AT_EMPTY_PATH) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOENT, errno.EPERM):
            raise OSError(err, os.strerror(err), name)
        _empty_path_links[0] = False
    if _libc.linkat(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), dir_fd, target, _AT_SYMLINK_FOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)


def _rename_noreplace(source_dir: int, source: str, dir_fd: int, name: str) -> bool:
    """renameat2(2) that fails with EEXIST instead of replacing ``name``; False where the file system cannot."""
    if _libc.renameat2(source_dir, os.fsencode(source), dir_fd, os.fsencode(name), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err), name)


def _mtime_of(item: WriteTarget) -> float | None:
    value = item.metadata.get("file_mod_time")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= _MTIME_MAX:
        log.warning("%s: file_mod_time %r is not a usable time; the stored file keeps its arrival time",
                    item.relative_name, value)
        return None
    return float(value)


def _starts_with(fd: int, dir_fd: int, name: str, size: int) -> bool:
    """Does the file ``fd`` begin with all ``size`` bytes of the regular file ``name`` (sizes first)?"""
    if os.fstat(fd).st_size < size:
        return False
    other = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
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
        self._root_bytes = len(os.fsencode(self._tree.root))
        self._dirs = DirCache(self._tree)
        self._area = PartialArea(self._tree)
        self._warned_no_tmpfile = False

    @property
    def partial_path(self) -> str:
        """This writer's own directory for unfinished files ("" until it needed one)."""
        return self._area.path

    def open(self, item: WriteTarget) -> _Open:
        if self._root_bytes + 1 + len(os.fsencode(item.relative_name)) >= _PATH_MAX:
            raise PathRefused(f"{item.relative_name!r}: the path below {self._tree.root!r} is longer than the"
                              f" file system allows ({_PATH_MAX - 1} bytes)")
        directory = self._dirs.acquire(item.relative_parts)
        try:
            try:
                fd, temp = self._create(directory)
            except OSError:
                if os.fstat(directory.fd).st_nlink:
                    raise
                # NOTE: the cached directory was removed meanwhile (ext4 says EPERM): make it again
                directory = self._dirs.reopen(directory)
                fd, temp = self._create(directory)
        except BaseException:
            self._dirs.release(directory)
            raise
        return _Open(fd, directory, item.filename, _mtime_of(item), temp)

    def _create(self, directory: Dir) -> tuple[int, str | None]:
        try:
            return _open_unnamed(directory.fd), None
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            if not self._warned_no_tmpfile:
                self._warned_no_tmpfile = True
                log.warning("%s: no O_TMPFILE (%s); unfinished files go to %s", directory.path, exc.strerror,
                            os.path.join(self._tree.root, self._tree.PARTIAL_DIR))
        temp = self._area.new_name()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(temp, flags, 0o644, dir_fd=self._area.fd), temp

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
        self._renew_directories(handles, errors)
        for n, h in enumerate(handles):
            if errors[n] is None:
                errors[n] = self._publish(h)
            self._close_fd(h)
        if sync:
            self._sync_directories([h for h, e in zip(handles, errors) if e is None], grouped, errors, handles)
        for h in handles:
            self._release(h)
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

    def _renew_directories(self, handles: Sequence[_Open], errors: list[BaseException | None]) -> None:
        """Once per batch and directory: does its path still lead to the directory its files will be named in?"""
        holders: dict[Dir, list[int]] = {}
        for n, h in enumerate(handles):
            if errors[n] is None and h.directory is not None:
                holders.setdefault(h.directory, []).append(n)
        for held, indices in holders.items():
            try:
                fresh = self._dirs.renew(held, len(indices))
            except (PathRefused, OSError) as exc:
                for n in indices:
                    errors[n] = exc
                continue
            for n in indices:
                handles[n].directory = fresh

    def _sync_directories(self, stored: list[_Open], grouped: bool, errors: list[BaseException | None],
                          handles: Sequence[_Open]) -> None:
        directories = {h.directory for h in stored if h.directory is not None}
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
                    os.fsync(directory.fd)
                except OSError as exc:
                    failed[directory] = exc
        for n, h in enumerate(handles):
            if errors[n] is None and h.directory in failed:
                errors[n] = failed[h.directory]  # type: ignore[index]

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
                os.unlink(handle.temp, dir_fd=self._area.fd)
                handle.temp = None
        except OSError as exc:
            return exc
        return None

    def _name_unnamed(self, fd: int) -> str | None:
        """A name in the partial directory for an unnamed file, or None if that is another file system."""
        temp = self._area.new_name()
        try:
            _link_unnamed(fd, self._area.fd, temp)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return None
        return temp

    def _place(self, handle: _Open) -> None:
        """Move the file to its final name, never replacing one: FileExistsError if it is taken."""
        assert handle.directory is not None
        dir_fd = handle.directory.fd
        if handle.temp is None:
            _link_unnamed(handle.fd, dir_fd, handle.filename)
        elif _rename_noreplace(self._area.fd, handle.temp, dir_fd, handle.filename):
            handle.temp = None
        else:
            os.link(handle.temp, handle.filename, src_dir_fd=self._area.fd, dst_dir_fd=dir_fd)

    def _make_room(self, handle: _Open) -> bool:
        """The final name exists: move it aside (or remove it) and say True, or False if it is this very file."""
        assert handle.directory is not None
        dir_fd, name, final = handle.directory.fd, handle.filename, handle.final
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return True
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory stands where the file should go", final)
        if self.config.existing == "overwrite":
            os.unlink(name, dir_fd=dir_fd)
            return True
        # NOTE: a new version that begins with all of the earlier one (a re-sent file, or one that was sent
        # while still being written and then grew) replaces it without a backup: nothing of it is lost.
        if stat.S_ISREG(st.st_mode) and _starts_with(handle.fd, dir_fd, name, st.st_size):
            if os.fstat(handle.fd).st_size == st.st_size:
                log.debug("%s is already stored with the same content", final)
                return False
            os.unlink(name, dir_fd=dir_fd)
            return True
        backup = self._backup(dir_fd, name)
        log.info("%s existed with other content: the earlier version is kept as %s", final, backup)
        os.unlink(name, dir_fd=dir_fd)
        return True

    @staticmethod
    def _backup(dir_fd: int, name: str) -> str:
        for n in itertools.count(1):
            backup = f"{name}.~{n}~"
            try:
                os.link(name, backup, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                return backup
            except FileExistsError:
                continue
        raise AssertionError("unreachable")  # pragma: no cover

    def abort(self, handle: _Open) -> None:
        self._close_fd(handle)
        if handle.temp is not None:
            try:
                os.unlink(handle.temp, dir_fd=self._area.fd)
            except FileNotFoundError:
                pass
            handle.temp = None
        self._release(handle)

    def cleanup(self, before: float) -> int:
        """Unfinished files of receivers no longer running: their partial directories (whose lock is free),
        and files directly in the reserved directory (earlier versions) older than ``before``."""
        directory = os.path.join(self._tree.root, self._tree.PARTIAL_DIR)
        if not self.config.clean_stale_parts or not os.path.isdir(directory):
            return 0
        removed = clean_dead_areas(directory, self._area.name)
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

    def shutdown(self) -> None:
        self._dirs.close()
        self._area.close()

    def _release(self, handle: _Open) -> None:
        if handle.directory is not None:
            self._dirs.release(handle.directory)
            handle.directory = None

    @staticmethod
    def _close_fd(handle: _Open) -> None:
        if handle.fd >= 0:
            os.close(handle.fd)
            handle.fd = -1
