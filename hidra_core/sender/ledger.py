"""The sender's on-disk ledger: one row per file with its state, so a restart resumes instead of losing work.

States move ``seen -> sent -> confirmed -> removed``; ``unconfirmed`` marks files that used up their attempts
(kept at the source and reported); ``failed`` (the fetcher could not read it), ``refused`` (a name that is not
valid UTF-8; the row's names are then escaped text) and ``vanished`` (gone after it was sent, before its removal
was confirmed) are kept with their reason for ``hidra ledger``. Events that carried their data in memory (stream
frames, ``inline``) are forgotten once confirmed (their copy is safe, and a stream would fill the ledger); one
still pending when a sender stops, or dropped at the hold bound, becomes ``lost``: its data is gone and the row
says so, with the event's metadata. SQLite in WAL mode: a committed transaction
survives a SIGKILL of the process. The ledger is owned by one thread (the sender's router loop).
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import IO, Iterable, Iterator

from hidra_core.errors import HidraError
from hidra_core.host.build import default_ledger_path
from hidra_core.types import FILE, FileEvent

__all__ = ["CONFIRMED", "FAILED", "LOST", "Ledger", "LedgerLocked", "LedgerRow", "PROBLEMS", "REFUSED", "REMOVED",
           "SEEN", "SENT", "STATE_NAMES", "UNCONFIRMED", "VANISHED"]

SEEN, SENT, CONFIRMED, REMOVED, UNCONFIRMED, FAILED, REFUSED, VANISHED, LOST = range(9)
STATE_NAMES = {SEEN: "seen", SENT: "sent", CONFIRMED: "confirmed", REMOVED: "removed", UNCONFIRMED: "unconfirmed",
               FAILED: "failed", REFUSED: "refused", VANISHED: "vanished", LOST: "lost"}
#: states a user should hear about: kept at the source (or gone) without a confirmed copy
PROBLEMS = (UNCONFIRMED, FAILED, REFUSED, VANISHED, LOST)
_INT64 = (-(2**63), 2**63 - 1)

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
    updated REAL NOT NULL,
    identity TEXT,
    reason TEXT,
    kind TEXT,
    series TEXT,
    metadata TEXT,
    inline INTEGER
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
    identity: str | None = None
    reason: str | None = None
    inline: bool = False  # the data was in memory: it cannot be read again


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
        self._migrate()
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

    def _migrate(self) -> None:
        """Ledgers written before identities and reasons were kept get the columns (empty: resent once)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(files)")}
        for column, sql_type in (("identity", "TEXT"), ("reason", "TEXT"), ("kind", "TEXT"), ("series", "TEXT"),
                                 ("metadata", "TEXT"), ("inline", "INTEGER")):
            if column not in have:
                self._db.execute(f"ALTER TABLE files ADD COLUMN {column} {sql_type}")

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
        """New files start as ``seen``; a file that failed, vanished or was lost and is reported again starts over.

        Events with metadata, a type or a payload keep them in the row (``inline``: the data was in memory)."""
        now = time.time()
        self._db.executemany(
            "INSERT INTO files (file_id, source_path, relative_path, filename, state, updated, kind, series, metadata,"
            " inline) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?) ON CONFLICT(file_id) DO UPDATE SET state=0, reason=NULL,"
            " updated=excluded.updated, kind=excluded.kind, series=excluded.series, metadata=excluded.metadata,"
            f" inline=excluded.inline WHERE state IN ({FAILED}, {VANISHED}, {LOST}) OR excluded.inline",
            [(e.file_id, e.source_path, e.relative_path, e.filename, now, *_described(e)) for e in events])

    def get(self, file_id: str) -> LedgerRow | None:
        row = self._db.execute("SELECT file_id, state, size, mtime_ns, checksum, attempts, identity, reason"
                               " FROM files WHERE file_id=?", (file_id,)).fetchone()
        return LedgerRow(*row) if row else None

    def states(self, file_ids: list[str]) -> dict[str, tuple[int, float, str | None]]:
        """``file_id -> (state, updated, reason)`` of those of ``file_ids`` the ledger holds."""
        out: dict[str, tuple[int, float, str | None]] = {}
        for start in range(0, len(file_ids), 500):  # NOTE: SQLite limits the parameters of one statement
            part = file_ids[start:start + 500]
            rows = self._db.execute("SELECT file_id, state, updated, reason FROM files WHERE file_id IN"
                                    f" ({','.join('?' * len(part))})", part)
            out.update((fid, (state, updated, reason)) for fid, state, updated, reason in rows)
        return out

    def mark_sent(self, event: FileEvent, size: int, mtime_ns: int, checksum: str, identity: str | None = None) -> None:
        # NOTE: SQLite integers are 64-bit; an mtime after 2262 is stored clamped (the identity keeps it exactly).
        mtime_ns = min(max(mtime_ns, _INT64[0]), _INT64[1])
        self._db.execute(
            "INSERT INTO files (file_id, source_path, relative_path, filename, state, size, mtime_ns, checksum,"
            " attempts, updated, identity) VALUES (?, ?, ?, ?, 1, ?, ?, ?, 1, ?, ?) ON CONFLICT(file_id) DO UPDATE"
            " SET state=1, size=excluded.size, mtime_ns=excluded.mtime_ns, checksum=excluded.checksum,"
            " attempts=attempts+1, updated=excluded.updated, identity=excluded.identity, reason=NULL",
            (event.file_id, event.source_path, event.relative_path, event.filename, size, mtime_ns, checksum,
             time.time(), identity))

    def set_state(self, file_id: str, state: int, reason: str | None = None) -> None:
        self._db.execute("UPDATE files SET state=?, reason=?, updated=? WHERE file_id=?",
                         (state, reason, time.time(), file_id))

    def set_states(self, file_ids: Iterable[str], state: int) -> None:
        """``set_state`` of many files in one statement (a burst of confirmations); clears their reasons."""
        now = time.time()
        self._db.executemany("UPDATE files SET state=?, reason=NULL, updated=? WHERE file_id=?",
                             [(state, now, fid) for fid in file_ids])

    def record_problem(self, event: FileEvent, state: int, reason: str) -> bool:
        """Put a file (recorded or not) into a problem state with its reason; False if it already was so."""
        row = self.get(event.file_id)
        if row is not None and (row.state, row.reason) == (state, reason):
            return False
        self._db.execute(
            "INSERT INTO files (file_id, source_path, relative_path, filename, state, updated, reason, kind, series,"
            " metadata, inline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(file_id) DO UPDATE SET"
            " state=excluded.state, reason=excluded.reason, updated=excluded.updated",
            (event.file_id, event.source_path, event.relative_path, event.filename, state, time.time(), reason,
             *_described(event)))
        return True

    def forget(self, file_id: str) -> None:
        self._db.execute("DELETE FROM files WHERE file_id=?", (file_id,))

    def pending(self, include_confirmed: bool) -> Iterator[tuple[FileEvent, LedgerRow]]:
        """Files a previous run did not finish: seen, sent or unconfirmed, and (when sources are removed)
        confirmed but not yet removed."""
        states = "0, 1, 2, 4" if include_confirmed else "0, 1, 4"
        rows = self._db.execute(
            "SELECT source_path, relative_path, filename, kind, series, metadata, inline, file_id, state, size,"
            f" mtime_ns, checksum, attempts, identity, reason FROM files WHERE state IN ({states}) ORDER BY rowid"
        ).fetchall()
        for source_path, rel, name, kind, series, metadata, inline, *rest in rows:
            event = FileEvent(source_path, rel, name, kind=kind or FILE, series=series or "",
                              metadata=json.loads(metadata) if metadata else {})
            yield event, replace(LedgerRow(*rest), inline=bool(inline))

    def files(self, states: Iterable[int], limit: int) -> list[tuple[str, str, int, str | None]]:
        """``(file_id, state name, attempts, reason)`` of files in ``states``, oldest change first."""
        wanted = sorted(set(states))
        rows = self._db.execute(
            f"SELECT file_id, state, attempts, reason FROM files WHERE state IN ({','.join('?' * len(wanted))})"
            " ORDER BY updated LIMIT ?", (*wanted, limit)).fetchall()
        return [(fid, STATE_NAMES[state], attempts, reason) for fid, state, attempts, reason in rows]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()
        return {STATE_NAMES[state]: n for state, n in rows}


def _described(event: FileEvent) -> tuple[str | None, str | None, str | None, int]:
    """The row's ``kind, series, metadata, inline`` of an event (NULLs for a plain file)."""
    return (None if event.kind == FILE else event.kind, event.series or None,
            json.dumps(event.metadata, separators=(",", ":")) if event.metadata else None, int(event.inline))
