"""End to end through real ``hidra`` processes: watched directory -> storage receiver."""
from __future__ import annotations

import re
import signal
import time

import pytest

from conftest import LAYOUTS
from hidra_core.sender.lane import member_for
from hidra_core.sender.ledger import Ledger
from hidra_proc import intact, no_part_files, tree, wait_until, write_file

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024


def _all_arrived(pair, expected: dict[str, int]) -> bool:
    return all(intact(pair.target, rel, size) for rel, size in expected.items())


@pytest.mark.parametrize("storage_path", LAYOUTS, indirect=True)
def test_nested_tree_of_300_files_arrives_byte_identical(storage_path):
    pair = storage_path
    pair.start_receiver()
    pair.start_sender(f"sender.chunksize={CHUNK}")
    expected: dict[str, int] = {"empty.dat": 0, "exact.dat": 3 * CHUNK, "several.dat": 5 * CHUNK + 17,
                                "one-short.dat": CHUNK - 1}
    for rel, size in expected.items():
        write_file(pair.source / rel, size)
    for i in range(296):
        rel = f"run{i % 4}/scan{i % 7}/deep/{i % 3}/f{i:04d}.raw"
        expected[rel] = (i * 997) % 20000
        write_file(pair.source / rel, expected[rel])

    wait_until(lambda: _all_arrived(pair, expected), 60, "300 files at the target")
    assert tree(pair.target) == expected  # nothing else: no temp files, no extras
    assert no_part_files(pair.target)
    assert tree(pair.source) == expected  # remove_source defaults to never


@pytest.mark.parametrize("storage_path", LAYOUTS, indirect=True)
def test_files_present_before_start_and_written_in_the_first_second(storage_path):
    pair = storage_path
    before = {f"old/{i}.bin": 1000 + i for i in range(50)}
    for rel, size in before.items():
        write_file(pair.source / rel, size)
    pair.start_receiver()
    sender = pair.start_sender(wait=False)
    during: dict[str, int] = {}
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 1.0:  # writes race the sender's start-up on purpose
        rel = f"new/d{i % 5}/{i}.bin"
        write_file(pair.source / rel, 100 + i)
        during[rel] = 100 + i
        i += 1
    sender.wait_ready()
    expected = {**before, **during}
    wait_until(lambda: _all_arrived(pair, expected), 60, f"{len(expected)} files at the target")
    assert tree(pair.target) == expected


@pytest.mark.parametrize("storage_path", LAYOUTS, indirect=True)
def test_sigterm_drains_and_both_exit_cleanly(storage_path):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender()
    write_file(pair.source / "a.dat", 5000)
    wait_until(lambda: intact(pair.target, "a.dat", 5000), 30, "a.dat")
    assert sender.stop() == 0
    assert "hidra sender stopped" in sender.text()
    for receiver in pair.receivers:
        assert receiver.stop() == 0
        assert "hidra receiver stopped" in receiver.text()


@pytest.mark.slow
@pytest.mark.parametrize("storage_path", LAYOUTS, indirect=True)
def test_receiver_sigkill_mid_run_with_removal_loses_nothing(storage_path):
    """SIGKILL the receiver among 1,000 files; no source file may disappear before its durable copy."""
    pair = storage_path
    pair.start_receiver()
    pair.start_sender(f"sender.chunksize={CHUNK}", "sender.storage.remove_source=after_confirmation",
                      "sender.storage.confirmation_timeout_s=5")
    expected = {f"d{i % 10}/f{i:04d}.dat": 2000 + (i * 131) % 150_000 for i in range(1000)}
    removed_too_early: set[str] = set()
    written: dict[str, int] = {}
    for n, (rel, size) in enumerate(expected.items()):
        write_file(pair.source / rel, size)
        written[rel] = size
        if n == 300:
            wait_until(lambda: len(tree(pair.target)) >= 100, 60, "the first files at the target")
            pair.receiver.proc.send_signal(signal.SIGKILL)
            pair.receiver.proc.wait(10)
            removed_too_early |= _removed_without_copy(pair, written)
    removed_too_early |= _removed_without_copy(pair, written)
    pair.start_receiver()

    def done() -> bool:
        removed_too_early.update(_removed_without_copy(pair, written))
        return not tree(pair.source) and _all_arrived(pair, expected) and no_part_files(pair.target)

    wait_until(done, 120, "every file stored and removed from the source")
    assert removed_too_early == set()
    assert tree(pair.target) == expected
    assert re.search(r"storage receiver( at \S+)? restarted", pair.sender.text())
    assert _ledger_after_stop(pair) == {"removed": len(expected)}


def _ledger_after_stop(pair) -> dict[str, int]:
    assert pair.sender.stop() == 0
    book = Ledger(str(pair.state / "ledger.sqlite"), None, exclusive=False)
    try:
        return book.counts()
    finally:
        book.close()


def _removed_without_copy(pair, written: dict[str, int]) -> set[str]:
    """Written files gone from the source whose target copy is missing or wrong.

    The source check comes first: a file removed after a durable copy must already have that copy."""
    gone = [rel for rel in written if not (pair.source / rel).exists()]
    return {rel for rel in gone if not intact(pair.target, rel, written[rel])}


@pytest.mark.slow
@pytest.mark.parametrize("storage_path", LAYOUTS, indirect=True)
def test_sender_sigkill_mid_run_then_restart_loses_nothing(storage_path):
    pair = storage_path
    pair.start_receiver()
    pair.start_sender(f"sender.chunksize={CHUNK}")
    expected = {f"d{i % 10}/f{i:04d}.dat": 1000 + (i * 37) % 90_000 for i in range(1000)}
    items = list(expected.items())
    for rel, size in items[:500]:
        write_file(pair.source / rel, size)
    wait_until(lambda: len(tree(pair.target)) >= 50, 60, "the first files at the target")
    pair.sender.proc.send_signal(signal.SIGKILL)
    pair.sender.proc.wait(10)
    for rel, size in items[500:]:  # written while no sender runs
        write_file(pair.source / rel, size)
    pair.start_sender(f"sender.chunksize={CHUNK}")
    wait_until(lambda: _all_arrived(pair, expected), 120, "all 1000 files after the sender restart")
    assert tree(pair.target) == expected


@pytest.mark.slow
@pytest.mark.parametrize("storage_path", ["group"], indirect=True)
def test_group_member_sigkilled_mid_run_its_files_go_to_the_others(storage_path):
    """A receiver group of 3 loses one member for good among 600 files: the other two store everything, its
    unconfirmed files included, and no source goes before its durable copy."""
    pair = storage_path
    pair.start_receiver()
    pair.start_sender(f"sender.chunksize={CHUNK}", "sender.storage.remove_source=after_confirmation")
    expected = {f"d{i % 10}/f{i:04d}.dat": 2000 + (i * 131) % 300_000 for i in range(600)}
    removed_too_early: set[str] = set()
    written: dict[str, int] = {}
    for n, (rel, size) in enumerate(expected.items()):
        write_file(pair.source / rel, size)
        written[rel] = size
        if n == 200:
            wait_until(lambda: len(tree(pair.target)) >= 50, 60, "the first files at the target")
            pair.receivers[1].proc.send_signal(signal.SIGKILL)
            pair.receivers[1].proc.wait(10)
            removed_too_early |= _removed_without_copy(pair, written)

    def done() -> bool:
        removed_too_early.update(_removed_without_copy(pair, written))
        return not tree(pair.source) and _all_arrived(pair, expected)

    # NOTE: far below confirmation_timeout_s (60 s): the lost member's files must not wait for it
    wait_until(done, 50, "every file stored by the two members left and removed from the source")
    assert removed_too_early == set()
    assert tree(pair.target) == expected
    assert "its files go to the others of the group" in pair.sender.text()
    assert _ledger_after_stop(pair) == {"removed": len(expected)}  # one row per file, whatever the pipeline
    stored = [len(re.findall(r"stored ", r.text())) for r in pair.receivers]
    assert stored[0] and stored[2], stored  # both others took files


@pytest.mark.parametrize("storage_path", ["group"], indirect=True)
def test_a_new_version_sent_to_another_member_is_not_undone_when_its_member_returns(storage_path):
    pair = storage_path
    pair.start_receiver()
    pair.start_sender(f"sender.chunksize={CHUNK}")
    members = [data for data, _conf, _status in pair.endpoints]
    write_file(pair.source / "f.dat", 3 * CHUNK + 1)
    wait_until(lambda: intact(pair.target, "f.dat", 3 * CHUNK + 1), 30, "version 1 of f.dat")
    home = member_for("f.dat", members, [0, 1, 2])
    pair.receivers[home].proc.send_signal(signal.SIGKILL)
    pair.receivers[home].proc.wait(10)
    write_file(pair.source / "f.dat", 2 * CHUNK + 7)  # version 2, while its member is gone
    wait_until(lambda: intact(pair.target, "f.dat", 2 * CHUNK + 7), 30, "version 2 of f.dat from another member")
    pair.start_receiver()
    back = next(f"g{i}.dat" for i in range(1000) if member_for(f"g{i}.dat", members, [0, 1, 2]) == home)
    write_file(pair.source / back, 5000)
    wait_until(lambda: intact(pair.target, back, 5000), 30, f"{back} stored by the member that came back")
    assert intact(pair.target, "f.dat", 2 * CHUNK + 7)
    # the files writer keeps the version it replaced under a backup name (receiver.files.existing)
    assert tree(pair.target) == {"f.dat": 2 * CHUNK + 7, "f.dat.~1~": 3 * CHUNK + 1, back: 5000}
