"""The sender's on-disk ledger: one row per file with its state, so a restart resumes instead of losing work.

States move ``seen -> sent -> confirmed -> removed``; ``unconfirmed`` marks files that used up their attempts
(kept at the source and reported). SQLite in WAL mode: a committed transaction survives a SIGKILL of the
process. The ledger is owned by one thread (the sender's router loop).
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

from hidra_core.errors import HidraError
from hidra_core.host.build import default_ledger_path
from hidra_core.types import FileEvent

__all__ = ["CONFIRMED", "Ledger", "LedgerLocked", "LedgerRow", "REMOVED", "SEEN", "SENT", "STATE_NAMES", "UNCONFIRMED"]

SEEN, SENT, CONFIRMED, REMOVED, UNCONFIRMED = 0, 1, 2, 3, 4
STATE_NAMES = {SEEN: "seen", SENT: "sent", CONFIRMED: "confirmed", REMOVED: "removed", UNCONFIRMED: "unconfirmed"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY,
    source_path TEXT NOT NULL,
    relative_path TEXT NOT NULL,
    filename TEXT NOT NULL,
    state INTEGER NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    checksum TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_state ON files (state);
"""


@dataclass(frozen=True)
class LedgerRow:
    file_id: str
    state: int
    size: int | None
    mtime_ns: int | None
    checksum: str | None
    attempts: int


class LedgerMismatch(HidraError):
    """The ledger file belongs to another source."""


class LedgerLocked(HidraError):
    """Another running sender holds the ledger."""


def _lock(path: str) -> IO[str]:
    """Hold ``<path>.lock`` (flock, released when the process ends, however it ends) and write our pid into it."""
    handle = open(path + ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise LedgerLocked(f"ledger {path} is in use by another sender (pid {holder}); give each sender its own"
                           " sender.ledger.path, or stop the other one") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class Ledger:
    def __init__(self, path: str | None, source_root: str | None, *, exclusive: bool = True) -> None:
        """Open (or create) the ledger at ``path``; None: the default ledger of ``source_root``.

        ``exclusive`` (a sender) takes a lock that a second sender on the same ledger cannot get; ``hidra
        ledger`` reads without it. ``LedgerMismatch`` if the file belongs to another source root.
        """
        self.path = path = default_ledger_path(source_root) if path is None else path
        self._lock: IO[str] | None = None
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if exclusive:
                self._lock = _lock(path)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NOTE: synchronous=NORMAL keeps committed rows across a process crash (SIGKILL); after a power
        # loss the last rows may be lost, which the start-up rescan of the source tree makes good.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._check_root(source_root)
        self._db.execute("BEGIN")

    def _check_root(self, source_root: str | None) -> None:
        if source_root is None:
            return
        row = self._db.execute("SELECT value FROM meta WHERE key='source_root'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('source_root', ?)", (source_root,))
        elif row[0] != source_root:
            self._db.close()
            if self._lock is not None:
                self._lock.close()
            raise LedgerMismatch(f"ledger {self.path} belongs to source {row[0]!r}, not {source_root!r}; "
                                 "give each sender its own sender.ledger.path (or leave it unset: one ledger per"
                                 " source)")

    def commit(self) -> None:
        """Make every change since the last commit durable against a process crash."""
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")

    def close(self) -> None:
        self._db.execute("COMMIT")
        self._db.close()
        if self._lock is not None:
            self._lock.close()  # NOTE: releases the flock

    def record_seen(self, events: Iterable[FileEvent]) -> None:
        now = time.time()
        self._db.executemany(
            "INSERT OR IGNORE INTO files (file_id, source_path, relative_path, filename, state, updated)"
            " VALUES (?, ?, ?, ?, 0, ?)",
            [(e.file_id, e.source_path, e.relative_path, e.filename, now) for e in events])

    def get(self, file_id: str) -> LedgerRow | None:
        row = self._db.execute("SELECT file_id, state, size, mtime_ns, checksum, attempts FROM files"
                               " WHERE file_id=?", (file_id,)).fetchone()
        return LedgerRow(*row) if row else None

    def mark_sent(self, event: FileEvent, size: int, mtime_ns: int, checksum: str) -> None:
        self._db.execute(
            "INSERT INTO files (file_id, source_path, relative_path, filename, state, size, mtime_ns, checksum,"
            " attempts, updated) VALUES (?, ?, ?, ?, 1, ?, ?, ?, 1, ?) ON CONFLICT(file_id) DO UPDATE SET"
            " state=1, size=excluded.size, mtime_ns=excluded.mtime_ns, checksum=excluded.checksum,"
            " attempts=attempts+1, updated=excluded.updated",
            (event.file_id, event.source_path, event.relative_path, event.filename, size, mtime_ns, checksum,
             time.time()))

    def set_state(self, file_id: str, state: int) -> None:
        self._db.execute("UPDATE files SET state=?, updated=? WHERE file_id=?", (state, time.time(), file_id))

    def forget(self, file_id: str) -> None:
        self._db.execute("DELETE FROM files WHERE file_id=?", (file_id,))

    def pending(self, include_confirmed: bool) -> Iterator[tuple[FileEvent, LedgerRow]]:
        """Files a previous run did not finish: seen, sent or unconfirmed, and (when sources are removed)
        confirmed but not yet removed."""
        states = "0, 1, 2, 4" if include_confirmed else "0, 1, 4"
        rows = self._db.execute(
            "SELECT source_path, relative_path, filename, file_id, state, size, mtime_ns, checksum, attempts"
            f" FROM files WHERE state IN ({states}) ORDER BY rowid").fetchall()
        for source_path, rel, name, *rest in rows:
            yield FileEvent(source_path, rel, name), LedgerRow(*rest)

    def files(self, states: Iterable[int], limit: int) -> list[tuple[str, str, int]]:
        """``(file_id, state name, attempts)`` of files in ``states``, oldest change first."""
        wanted = sorted(set(states))
        rows = self._db.execute(
            f"SELECT file_id, state, attempts FROM files WHERE state IN ({','.join('?' * len(wanted))})"
            " ORDER BY updated LIMIT ?", (*wanted, limit)).fetchall()
        return [(fid, STATE_NAMES[state], attempts) for fid, state, attempts in rows]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()
        return {STATE_NAMES[state]: n for state, n in rows}
