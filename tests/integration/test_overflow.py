"""A real inotify queue overflow: the sender rescans and still delivers every file."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hidra_proc import intact, scrape, tree, wait_until, write_file

pytestmark = pytest.mark.integration

MAX_EVENTS = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.fixture
def tiny_inotify_queue():
    """Lower the kernel's per-instance inotify queue to 16 events while the sender starts, then restore it."""
    if os.geteuid() != 0 or not os.access(MAX_EVENTS, os.W_OK):
        pytest.skip("needs root to change fs.inotify.max_queued_events")
    old = MAX_EVENTS.read_text()
    MAX_EVENTS.write_text("16\n")
    try:
        yield
    finally:
        MAX_EVENTS.write_text(old)


def _overflow(pair, sender) -> dict[str, int]:
    """Provoke a real overflow of the sender's 16-event inotify queue; the files written, all delivered."""
    MAX_EVENTS.write_text("16384\n")  # only the sender's instance needs the small queue
    # Directories first, each proven watched by a file that arrived, so the burst below produces events.
    expected = {f"burst/{d}/first.dat": 10 for d in range(8)}
    for rel, size in expected.items():
        write_file(pair.source / rel, size)
    wait_until(lambda: all(intact(pair.target, r, s) for r, s in expected.items()), 60, "the watched directories")
    # Freeze the sender so the 16-event kernel queue really overflows while 400 files (800 events) are written.
    sender.signal(signal.SIGSTOP)
    try:
        burst = {f"burst/{i % 8}/f{i:03d}.dat": 500 + i for i in range(400)}
        for rel, size in burst.items():
            write_file(pair.source / rel, size)
        expected.update(burst)
    finally:
        sender.signal(signal.SIGCONT)
    wait_until(lambda: all(intact(pair.target, r, s) for r, s in expected.items()), 60, "400 files after overflow")
    return expected


def test_queue_overflow_triggers_a_rescan_and_nothing_is_lost(storage_path, tiny_inotify_queue):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender()  # its inotify instance gets the 16-event queue
    expected = _overflow(pair, sender)
    assert tree(pair.target) == expected
    assert "inotify queue overflowed" in sender.text()


def test_inotify_overflows_and_rescans_are_counted_in_metrics(storage_path, tiny_inotify_queue):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender()
    before = scrape(sender.rest_url())
    assert (before["hidra_sender_source_overflows_total"], before["hidra_sender_source_rescans_total"]) == (0, 0)
    _overflow(pair, sender)

    def counted() -> bool:  # NOTE: the snapshot /metrics renders is up to half a second old
        overflows, now = sender.text().count("inotify queue overflowed"), scrape(sender.rest_url())
        return overflows >= 1 and now["hidra_sender_source_overflows_total"] == overflows == \
            now["hidra_sender_source_rescans_total"]

    wait_until(counted, 10, "every overflow and its rescan in /metrics")
