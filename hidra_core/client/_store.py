"""Writing a received file below a base directory: safe names only (§9 D5), atomically (temp file + rename)."""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any, Collection

from hidra_core.errors import PathRefused
from hidra_core.paths import SafeTree, split_checked

__all__ = ["FileStore"]


class FileStore:
    """Stores files at ``<base>/<relative_path>/<filename>``; ``base`` must exist and is never left.

    ``dirs_not_to_create``: top-level directories (e.g. ``current``, ``commissioning``) that must already exist
    below ``base``; a file for a missing one is refused rather than creating it, as a 4.x receiver does.
    """

    def __init__(self, base: str, dirs_not_to_create: Collection[str] = ()) -> None:
        self.tree = SafeTree(base)
        self.dirs_not_to_create = frozenset(dirs_not_to_create)

    def path_for(self, metadata: dict[str, Any]) -> tuple[str, str]:
        """``(directory, filename)``; ``PathRefused`` for unsafe or forbidden names. Creates the directory."""
        relative_path = metadata.get("relative_path") or ""
        filename = metadata.get("filename")
        if not isinstance(relative_path, str) or not isinstance(filename, str):
            raise PathRefused(f"relative_path {relative_path!r} / filename {filename!r} are not strings")
        parts, name = split_checked(relative_path, filename)
        if parts and parts[0] in self.dirs_not_to_create:
            top = os.path.join(self.tree.root, parts[0])
            if not os.path.isdir(top):
                raise PathRefused(f"{top!r} does not exist and is listed in dirs_not_to_create")
        return self.tree.directory(parts), name

    def write(self, metadata: dict[str, Any], data: bytes) -> str:
        """Write ``data`` durably under its final name; readers never see a partial file. Returns the path."""
        directory, name = self.path_for(metadata)
        final = os.path.join(directory, name)
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.part")
        # NOTE: os.open with 0o666 (not mkstemp's 0600) so the stored file gets the permissions the umask allows.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            mod_time = metadata.get("file_mod_time")
            if isinstance(mod_time, (int, float)) and not isinstance(mod_time, bool):
                os.utime(tmp, (mod_time, mod_time))
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)
        return final


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
