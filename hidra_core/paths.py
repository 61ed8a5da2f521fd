"""Receiving-side path safety (hidra4-protocol.md §9 D5): nothing is ever created outside the root."""
from __future__ import annotations

import os
import stat

from hidra_core.errors import PathRefused, shown

__all__ = ["NAME_MAX", "PARTIAL_DIR", "PATH_MAX", "SafeTree", "split_checked"]

_BAD_CHARS = frozenset(chr(c) for c in range(32)) | {"\x7f", "\\"}
#: Linux limits in bytes: one name, and a whole path with its terminating NUL
NAME_MAX = 255
PATH_MAX = 4096
#: the one directory below a target root that holds unfinished files where the file system has no O_TMPFILE;
#: incoming names may not use it, so clean-up there can never touch a user's file
PARTIAL_DIR = ".hidra-partial"


def _check_component(part: str, what: str) -> None:
    if part in ("", ".", ".."):
        raise PathRefused(f"{what} has an empty, '.' or '..' component")
    bad = _BAD_CHARS.intersection(part)
    if bad:
        raise PathRefused(f"{what} contains forbidden characters {sorted(bad)!r}")
    if part == PARTIAL_DIR:
        raise PathRefused(f"{what}: {PARTIAL_DIR!r} is reserved for the receiver's unfinished files")
    try:
        size = len(part.encode("utf-8"))
    except UnicodeEncodeError:
        raise PathRefused(f"{what} is not valid UTF-8 text") from None
    if size > NAME_MAX:
        raise PathRefused(f"{what} has a component of {size} bytes; the file system allows {NAME_MAX}")


def split_checked(relative_path: str, filename: str) -> tuple[tuple[str, ...], str]:
    """Validate wire names and return ``(directory components, filename)``; ``PathRefused`` says why not."""
    if relative_path.startswith("/"):
        raise PathRefused(f"relative_path {shown(relative_path)} is absolute")
    # NOTE: the length first, and the name quoted once: checking each component of a 256 KiB path while quoting
    # the whole path took the receiver 36 s (quadratic); surrogates are refused per component below
    size = len(relative_path.encode("utf-8", "surrogatepass")) + 1 + len(filename.encode("utf-8", "surrogatepass"))
    if size >= PATH_MAX:
        raise PathRefused(f"path {shown(relative_path)}/{shown(filename)} is {size} bytes; the file system allows"
                          f" {PATH_MAX - 1}")
    parts = tuple(relative_path.split("/")) if relative_path else ()
    what = f"relative_path {shown(relative_path)}"
    for part in parts:
        _check_component(part, what)
    if "/" in filename:
        raise PathRefused(f"filename {shown(filename)} is not a single path component")
    _check_component(filename, f"filename {shown(filename)}")
    return parts, filename


def _real_directories(path: str, depth: int) -> bool:
    """Are the last ``depth`` components of ``path`` directories, none a symlink?"""
    # NOTE: realpath() per file would lstat the root's own components too: 4 lstats and ~60 us a file more for
    # small files, with no other answer (the walk below the root never looks at them either).
    for _ in range(depth):
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
        path = os.path.dirname(path)
    return True


class SafeTree:
    """Creates directories below ``root`` and refuses any that would resolve outside it (symlinks included)."""

    PARTIAL_DIR = PARTIAL_DIR

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"target root {root!r} does not exist or is not a directory")
        self.root = os.path.realpath(root)
        self._known: set[tuple[str, ...]] = set()

    def directory(self, parts: tuple[str, ...]) -> str:
        """Absolute path of ``root/parts``, created if needed; ``PathRefused`` if it leaves the root."""
        path = os.path.join(self.root, *parts)
        # A cached directory may since have been replaced by a symlink, or removed: only trust it while each of
        # its components below the root is still a real directory.
        if parts in self._known and _real_directories(path, len(parts)):
            return path
        current = self.root
        for part in parts:
            current = os.path.join(current, part)
            try:
                os.mkdir(current)
            except FileExistsError:
                pass
            st = os.lstat(current)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(current)
                if not (real == self.root or real.startswith(self.root + os.sep)) or not os.path.isdir(real):
                    raise PathRefused(f"{'/'.join(parts)!r} leads out of the target root through a symlink")
            elif not stat.S_ISDIR(st.st_mode):
                raise PathRefused(f"{'/'.join(parts)!r}: {current!r} exists and is not a directory")
        if len(self._known) > 100_000:  # bound memory on trees with very many directories
            self._known.clear()
        self._known.add(parts)
        return path

    def partial_directory(self) -> str:
        """``root/.hidra-partial``, created if needed: unfinished files where O_TMPFILE is not available."""
        path = os.path.join(self.root, PARTIAL_DIR)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise PathRefused(f"{path!r} exists and is not a directory")
        return path
