"""The ledger keeps what went wrong and why (failed, refused, vanished, unconfirmed), stores any mtime and the
file's full identity, opens ledgers written before identities existed, and ``hidra ledger`` lists the problems."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hidra_core import FileEvent
from hidra_core.sender.ledger import (FAILED, PROBLEMS, REFUSED, SEEN, SENT, UNCONFIRMED, VANISHED, Ledger,
                                      LedgerRow)

ROOT = "/ramdisk/det1"


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "ledger.sqlite")


@pytest.fixture
def ledger(db_path: str):
    led = Ledger(db_path, ROOT)
    yield led
    led.close()


def test_an_mtime_after_2262_is_stored_not_fatal(ledger: Ledger) -> None:
    far = 10_411_000_000 * 10**9  # the year 2300 in ns: beyond a signed 64-bit integer
    ledger.mark_sent(FileEvent(ROOT, "", "future.dat"), 5, far, "abc", f"1:2:3:5:{far}")
    row = ledger.get("future.dat")
    assert row is not None and row.state == SENT and row.mtime_ns == 2**63 - 1
    assert row.identity == f"1:2:3:5:{far}"  # the identity keeps the exact value


def test_identity_is_stored_with_the_send(ledger: Ledger) -> None:
    ledger.mark_sent(FileEvent(ROOT, "", "a"), 1, 2, "x", "dev:ino:ctime:1:2")
    assert ledger.get("a") == LedgerRow("a", SENT, 1, 2, "x", 1, "dev:ino:ctime:1:2", None)


def test_problems_keep_their_reason_and_are_listed(ledger: Ledger) -> None:
    ledger.record_seen([FileEvent(ROOT, "", n) for n in ("ok", "bad-read", "gone")])
    assert ledger.record_problem(FileEvent(ROOT, "", "bad-read"), FAILED, "reading it: OSError: EIO") is True
    assert ledger.record_problem(FileEvent(ROOT, "", "bad-read"), FAILED, "reading it: OSError: EIO") is False
    assert ledger.record_problem(FileEvent(ROOT, "", "bad\\xffname"), REFUSED, "name is not valid UTF-8") is True
    ledger.mark_sent(FileEvent(ROOT, "", "gone"), 1, 1, "c")
    ledger.set_state("gone", VANISHED, "vanished from the source before its copy was confirmed")
    listed = {fid: (state, reason) for fid, state, _attempts, reason in ledger.files(PROBLEMS, 100)}
    assert listed == {"bad-read": ("failed", "reading it: OSError: EIO"),
                      "bad\\xffname": ("refused", "name is not valid UTF-8"),
                      "gone": ("vanished", "vanished from the source before its copy was confirmed")}
    assert [e.file_id for e, _row in ledger.pending(include_confirmed=True)] == ["ok"]


def test_a_failed_file_reported_again_starts_over(ledger: Ledger) -> None:
    ledger.record_problem(FileEvent(ROOT, "", "f"), FAILED, "boom")
    ledger.record_seen([FileEvent(ROOT, "", "f")])
    row = ledger.get("f")
    assert row is not None and (row.state, row.reason) == (SEEN, None)


def test_a_ledger_written_before_identities_opens_and_resends_nothing_needlessly(db_path: str) -> None:
    old = sqlite3.connect(db_path)
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE files (file_id TEXT PRIMARY KEY, source_path TEXT NOT NULL, relative_path TEXT NOT NULL,
            filename TEXT NOT NULL, state INTEGER NOT NULL, size INTEGER, mtime_ns INTEGER, checksum TEXT,
            attempts INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL);
        INSERT INTO files VALUES ('a', '/ramdisk/det1', '', 'a', 2, 10, 20, 'cs', 1, 0);
    """)
    old.close()
    led = Ledger(db_path, ROOT)
    try:
        assert led.get("a") == LedgerRow("a", 2, 10, 20, "cs", 1, None, None)
        led.mark_sent(FileEvent(ROOT, "", "b"), 1, 1, "x", "id")
        assert led.get("b").identity == "id"
    finally:
        led.close()


def test_hidra_ledger_lists_every_problem_with_its_reason(db_path: str, tmp_path: Path) -> None:
    led = Ledger(db_path, ROOT)
    led.record_problem(FileEvent(ROOT, "run1", "frame.cbf"), FAILED, "reading it: RuntimeError: boom")
    led.record_problem(FileEvent(ROOT, "", "bad\\xff.dat"), REFUSED, "name is not valid UTF-8")
    led.mark_sent(FileEvent(ROOT, "", "lost.dat"), 1, 1, "c")
    led.set_state("lost.dat", VANISHED, "vanished from the source before its copy was confirmed")
    led.mark_sent(FileEvent(ROOT, "", "late.dat"), 1, 1, "c")
    led.set_state("late.dat", UNCONFIRMED)
    led.close()
    report = subprocess.run([sys.executable, "-m", "hidra_core", "ledger", "--set", f"sender.ledger.path={db_path}"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    out = report.stdout
    assert "1 failed" in out and "1 refused" in out and "1 vanished" in out and "1 unconfirmed" in out
    assert "run1/frame.cbf  (reading it: RuntimeError: boom)" in out
    assert "bad\\xff.dat  (name is not valid UTF-8)" in out
    assert "lost.dat  (vanished from the source before its copy was confirmed)" in out
    assert "late.dat" in out
