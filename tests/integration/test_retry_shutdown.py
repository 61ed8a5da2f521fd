"""A storage receiver that is gone for a while: the sender keeps retrying, and it still stops when told to."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from hidra_proc import intact, tree, wait_until, write_file

pytestmark = pytest.mark.integration

BIG = 300 * 2**20
MiB_CHUNKS = f"sender.chunksize={2**20}"  # small chunks: little of a big file fits in the socket buffers


def mid_big_file(directory: Path, sender_pid: int) -> None:
    """Write BIG bytes to ``directory/big.dat`` and wait until the sender is in the middle of sending it."""
    big = directory / "big.dat"
    write_file(big, BIG)
    wait_until(lambda: open_by(sender_pid, big), 60, "the sender in the middle of big.dat")


def open_by(pid: int, path: Path) -> bool:
    """True while process ``pid`` has ``path`` open: the sender reads a file while it sends it."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def _ledger_rows(state: Path) -> dict[str, tuple[int, int]]:
    """file_id -> (state, attempts), read beside the running sender (SQLite WAL allows a second reader)."""
    db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return {fid: (st, att) for fid, st, att in db.execute("SELECT file_id, state, attempts FROM files")}
    except sqlite3.OperationalError:  # the sender has not created its tables yet
        return {}
    finally:
        db.close()


def test_target_down_longer_than_max_attempts_is_retried_until_it_is_back(storage_path):
    pair = storage_path
    pair.start_receiver()
    # NOTE: a deep send queue (hwm) and tiny timeouts let the files sent to the dead receiver use up their
    # attempts before the sender misses its beacon (3 s), which is what made the old sender give them up for good.
    sender = pair.start_sender("sender.storage.remove_source=after_confirmation",
                               "sender.storage.confirmation_timeout_s=0.05", "sender.storage.max_attempts=2",
                               "sender.storage.max_backoff_s=0.1", "sender.storage.hwm=1000")
    before = {f"before/{i}.dat": 1000 + i for i in range(5)}
    for rel, size in before.items():
        write_file(pair.source / rel, size)
    wait_until(lambda: not tree(pair.source), 30, "the first files stored, confirmed and removed")
    assert all(intact(pair.target, rel, size) for rel, size in before.items())

    pair.receiver.kill()  # SIGKILL: what went out from now on is lost with it
    during = {f"during/{i}.dat": 2000 + i for i in range(10)}
    for rel, size in during.items():
        write_file(pair.source / rel, size)

    def sent_max_attempts_times() -> bool:
        rows = _ledger_rows(pair.state)
        return all(any(fid.endswith(rel) and att >= 2 for fid, (_, att) in rows.items()) for rel in during)

    wait_until(sent_max_attempts_times, 60, "every file sent max_attempts times to the dead receiver")
    wait_until(lambda: "reported unconfirmed" in sender.text(), 30, "the retry warning")
    wait_until(lambda: "lost (no beacon" in sender.text(), 30, "the sender to notice the receiver is gone")
    after = {f"after/{i}.dat": 3000 + i for i in range(5)}  # written while the receiver is down
    for rel, size in after.items():
        write_file(pair.source / rel, size)

    pair.start_receiver()  # the same ports, as a restarted receiver on a real host would
    expected = {**before, **during, **after}
    wait_until(lambda: all(intact(pair.target, r, s) for r, s in expected.items()), 60, "every file at the target")
    wait_until(lambda: not tree(pair.source), 30, "every source removed after its confirmation")
    assert set(state for state, _ in _ledger_rows(pair.state).values()) == {3}  # all REMOVED, none given up
    assert sender.stop() == 0
    assert "not confirmed after 2 attempts" not in sender.text()


def test_sender_with_its_receiver_killed_mid_file_stops_after_drain_timeout(storage_path):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender("sender.drain_timeout_s=2", MiB_CHUNKS)
    mid_big_file(pair.source, sender.proc.pid)
    pair.receiver.signal(signal.SIGSTOP)  # stops taking data at once: the rest of big.dat cannot go out
    pair.receiver.kill()
    sender.signal(signal.SIGTERM)
    assert sender.proc.wait(60) == 0  # a deadline; the old sender waited for the link forever
    assert "drain_timeout_s (2 s) is over: stopping with big.dat half sent" in sender.text()


def test_second_sigterm_stops_a_draining_sender_at_once_and_nothing_is_lost(storage_path):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender("sender.drain_timeout_s=600", MiB_CHUNKS)
    mid_big_file(pair.source, sender.proc.pid)
    pair.receiver.signal(signal.SIGSTOP)  # a receiver stalled on a hung file system: the drain cannot finish
    sender.signal(signal.SIGTERM)
    wait_until(lambda: "received SIGTERM: draining" in sender.text(), 30, "the sender draining")
    sender.signal(signal.SIGTERM)
    assert sender.proc.wait(60) == 128 + signal.SIGTERM  # long before drain_timeout_s
    pair.receiver.kill()
    pair.start_receiver()
    pair.start_sender(MiB_CHUNKS)
    wait_until(lambda: intact(pair.target, "big.dat", BIG), 120, "big.dat after the restart")


def test_sender_logs_a_periodic_summary_with_its_counts(storage_path):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender("sender.summary_interval_s=0.5")
    expected = {f"s/{i}.dat": 100 * i for i in range(20)}
    for rel, size in expected.items():
        write_file(pair.source / rel, size)
    wait_until(lambda: all(intact(pair.target, r, s) for r, s in expected.items()), 60, "the files at the target")
    done = "0 queued, 0 awaiting confirmation, 0 retrying; since start 20 sent, 20 confirmed"
    wait_until(lambda: done in sender.text(), 30, "a summary with every file sent and confirmed")
    rates = re.findall(r"summary: ([\d.]+) files/s, ([\d.]+) MiB/s", sender.text())
    assert rates and any(float(files) > 0 for files, _ in rates)
