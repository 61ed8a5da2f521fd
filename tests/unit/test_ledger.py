"""The sender's SQLite ledger, on a real file: states, pending work, counts, restart, and the source-root guard."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hidra_core import FileEvent
from hidra_core.sender.ledger import CONFIRMED, REMOVED, SEEN, SENT, UNCONFIRMED, Ledger, LedgerMismatch, LedgerRow

ROOT = "/ramdisk/det1"


def _ev(name: str, rel: str = "scan1") -> FileEvent:
    return FileEvent(ROOT, rel, name)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "ledger.sqlite")  # the directory does not exist yet


@pytest.fixture
def ledger(db_path: str):
    led = Ledger(db_path, ROOT)
    yield led
    led.close()


def _pending_ids(led: Ledger, include_confirmed: bool) -> list[str]:
    return [event.file_id for event, _row in led.pending(include_confirmed)]


def test_creates_its_directory_and_file(db_path: str, ledger: Ledger) -> None:
    assert Path(db_path).is_file()
    assert ledger.counts() == {}


def test_record_seen_inserts_once(ledger: Ledger) -> None:
    ledger.record_seen([_ev("a"), _ev("b"), _ev("a")])
    assert ledger.get("scan1/a") == LedgerRow("scan1/a", SEEN, None, None, None, 0)
    assert ledger.counts() == {"seen": 2}
    ledger.mark_sent(_ev("a"), 10, 123, "cafe")
    ledger.record_seen([_ev("a")])  # seeing a sent file again does not reset it
    assert ledger.get("scan1/a").state == SENT
    assert ledger.get("scan1/nope") is None


def test_mark_sent_records_size_time_checksum_and_counts_attempts(ledger: Ledger) -> None:
    ledger.record_seen([_ev("a")])
    ledger.mark_sent(_ev("a"), 10, 123, "cafe")
    assert ledger.get("scan1/a") == LedgerRow("scan1/a", SENT, 10, 123, "cafe", 1)
    ledger.mark_sent(_ev("a"), 12, 456, "beef")  # re-sent after a change
    assert ledger.get("scan1/a") == LedgerRow("scan1/a", SENT, 12, 456, "beef", 2)
    ledger.mark_sent(_ev("never-seen", rel=""), 0, 1, "00")  # not seen before: inserted
    assert ledger.get("never-seen") == LedgerRow("never-seen", SENT, 0, 1, "00", 1)


def test_set_state_and_counts(ledger: Ledger) -> None:
    ledger.record_seen([_ev(n) for n in "abcde"])
    for name in "bcde":
        ledger.mark_sent(_ev(name), 1, 1, "x")
    ledger.set_state("scan1/c", CONFIRMED)
    ledger.set_state("scan1/d", REMOVED)
    ledger.set_state("scan1/e", UNCONFIRMED)
    assert ledger.counts() == {"seen": 1, "sent": 1, "confirmed": 1, "removed": 1, "unconfirmed": 1}
    assert ledger.get("scan1/c").state == CONFIRMED
    ledger.set_state("scan1/absent", CONFIRMED)  # unknown file: no row appears
    assert ledger.get("scan1/absent") is None


def test_a_burst_of_confirmations_is_recorded_with_set_states(ledger: Ledger) -> None:
    ledger.record_seen([_ev(n) for n in "abcd"])
    for name in "abc":
        ledger.mark_sent(_ev(name), 1, 1, "x")
    ledger.set_state("scan1/c", UNCONFIRMED, "used up its attempts")
    ledger.set_states((f"scan1/{n}" for n in ("a", "c", "absent")), CONFIRMED)
    assert ledger.counts() == {"seen": 1, "sent": 1, "confirmed": 2}
    assert ledger.files([CONFIRMED], 10) == [("scan1/a", "confirmed", 1, None), ("scan1/c", "confirmed", 1, None)]
    assert ledger.get("scan1/absent") is None
    ledger.set_states([], REMOVED)  # nothing to do
    ledger.commit()
    assert ledger.get("scan1/a").state == CONFIRMED


def test_pending_selects_unfinished_work_in_order(ledger: Ledger) -> None:
    ledger.record_seen([_ev(n) for n in "abcde"])
    for name in "bcde":
        ledger.mark_sent(_ev(name), 1, 1, "x")
    ledger.set_state("scan1/c", CONFIRMED)
    ledger.set_state("scan1/d", REMOVED)
    ledger.set_state("scan1/e", UNCONFIRMED)
    assert _pending_ids(ledger, include_confirmed=False) == ["scan1/a", "scan1/b", "scan1/e"]
    # when sources are removed after confirmation, confirmed-but-not-removed files are pending too
    assert _pending_ids(ledger, include_confirmed=True) == ["scan1/a", "scan1/b", "scan1/c", "scan1/e"]


def test_pending_rebuilds_events_and_rows(ledger: Ledger) -> None:
    ledger.record_seen([FileEvent(ROOT, "", "top.cbf")])
    ledger.mark_sent(FileEvent(ROOT, "x/y", "deep.cbf"), 7, 99, "abc")
    got = list(ledger.pending(include_confirmed=False))
    assert got == [(FileEvent(ROOT, "", "top.cbf"), LedgerRow("top.cbf", SEEN, None, None, None, 0)),
                   (FileEvent(ROOT, "x/y", "deep.cbf"), LedgerRow("x/y/deep.cbf", SENT, 7, 99, "abc", 1))]


def test_forget(ledger: Ledger) -> None:
    ledger.record_seen([_ev("a"), _ev("b")])
    ledger.forget("scan1/a")
    assert ledger.get("scan1/a") is None and ledger.counts() == {"seen": 1}
    ledger.forget("scan1/absent")  # no error
    ledger.record_seen([_ev("a")])  # a forgotten file can be seen again from scratch
    assert ledger.get("scan1/a").attempts == 0


def test_survives_close_and_reopen(db_path: str) -> None:
    led = Ledger(db_path, ROOT)
    led.record_seen([_ev("a"), _ev("b"), _ev("c")])
    led.mark_sent(_ev("b"), 5, 50, "bb")
    led.set_state("scan1/c", CONFIRMED)
    led.close()

    again = Ledger(db_path, ROOT)
    try:
        assert again.counts() == {"seen": 1, "sent": 1, "confirmed": 1}
        assert again.get("scan1/b") == LedgerRow("scan1/b", SENT, 5, 50, "bb", 1)
        assert _pending_ids(again, include_confirmed=True) == ["scan1/a", "scan1/b", "scan1/c"]
    finally:
        again.close()


def test_committed_rows_survive_a_killed_process(db_path: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os
        from hidra_core import FileEvent
        from hidra_core.sender.ledger import Ledger
        led = Ledger({db_path!r}, {ROOT!r})
        led.record_seen([FileEvent({ROOT!r}, "", "committed")])
        led.commit()
        led.record_seen([FileEvent({ROOT!r}, "", "uncommitted")])
        os._exit(9)  # no close(), no atexit: like SIGKILL
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, timeout=60)
    assert result.returncode == 9
    led = Ledger(db_path, ROOT)
    try:
        assert led.get("committed") is not None
        assert led.get("uncommitted") is None
    finally:
        led.close()


def test_a_second_source_root_is_refused_naming_both(db_path: str) -> None:
    Ledger(db_path, ROOT).close()
    with pytest.raises(LedgerMismatch) as info:
        Ledger(db_path, "/ramdisk/det2")
    message = str(info.value)
    assert ROOT in message and "/ramdisk/det2" in message and db_path in message
    assert "sender.ledger.path" in message
    led = Ledger(db_path, ROOT)  # the rightful owner still opens it
    led.close()


def test_no_root_skips_the_guard(db_path: str) -> None:
    Ledger(db_path, ROOT).close()
    Ledger(db_path, None).close()
    other = str(Path(db_path).with_name("other.sqlite"))
    Ledger(other, None).close()
    Ledger(other, "/any").close()  # the first root given is recorded...
    with pytest.raises(LedgerMismatch):
        Ledger(other, "/else")  # ...and guarded from then on


def test_in_memory() -> None:
    led = Ledger(":memory:", ROOT)
    led.record_seen([_ev("a")])
    assert led.counts() == {"seen": 1}
    led.close()
