"""What the ``http`` fetcher did with the files of a watched DCU, for the ``eiger`` source's loss report.

The source and the fetcher run in two threads of one sender. When a name leaves the DCU's listing, the source asks
whether HiDRA had a complete copy of its latest version (the fetcher downloaded every byte of the version it last
saw on the server) or deleted it itself; if neither, the file is lost (a reboot or ``clear`` wiped it, or it
changed after the last download) and the source reports it by name. Only roots a source watches are recorded, and
a name's record goes when the source forgets the name, so memory is bounded by the listings.
"""
from __future__ import annotations

import threading

__all__ = ["Progress", "progress"]


class Progress:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, int] = {}  # root -> sources watching it
        self._seen: dict[tuple[str, str], str] = {}  # (root, name) -> identity last seen on the server
        self._fetched: dict[tuple[str, str], str] = {}  # (root, name) -> identity downloaded completely
        self._deleted: set[tuple[str, str]] = set()

    def watch(self, root: str) -> None:
        with self._lock:
            self._watched[root] = self._watched.get(root, 0) + 1

    def unwatch(self, root: str) -> None:
        with self._lock:
            left = self._watched.pop(root, 1) - 1
            if left > 0:
                self._watched[root] = left
                return
            for table in (self._seen, self._fetched):
                for key in [k for k in table if k[0] == root]:
                    del table[key]
            self._deleted = {key for key in self._deleted if key[0] != root}

    def seen(self, root: str, name: str, identity: str) -> None:
        """The server has this version of ``name`` now."""
        with self._lock:
            if root in self._watched:
                self._seen[(root, name)] = identity

    def fetched(self, root: str, name: str, identity: str) -> None:
        """Every byte of this version of ``name`` was downloaded (a later delete of the name is ours again)."""
        with self._lock:
            if root in self._watched:
                self._fetched[(root, name)] = identity
                self._deleted.discard((root, name))

    def deleted(self, root: str, name: str) -> None:
        with self._lock:
            if root in self._watched:
                self._deleted.add((root, name))

    def forget(self, root: str, name: str) -> tuple[bool, bool]:
        """``(complete, deleted)`` of a name that left the listing: whether the version last seen was downloaded
        completely, and whether HiDRA deleted it. Its records go."""
        key = (root, name)
        with self._lock:
            seen, fetched = self._seen.pop(key, None), self._fetched.pop(key, None)
            deleted = key in self._deleted
            self._deleted.discard(key)
        return fetched is not None and fetched == (seen or fetched), deleted


#: the one registry of this process (the source and the fetcher are built separately by the kernel)
progress = Progress()
