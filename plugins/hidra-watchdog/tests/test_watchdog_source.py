"""The ``watchdog`` source with real observers on real directories: the event-source contract, close and move
events, the settle fallback of platforms without close events, a vanishing root, the bounded queue's overflow
and a big tree at start-up.

Negative checks never wait for time to pass: a sentinel file is written after the one that must not be reported,
and the observer delivers events in order, so once the sentinel is reported the other would have been too."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from watchdog_support import SlowWriter, ids

from hidra_core.testing import TreeSourceContract, collect_events, wait_until


class TestWatchdogContract(TreeSourceContract):
    driver_name = "watchdog"



class TestWatchdogSettleContract(TestWatchdogContract):
    """What macOS and Windows do (no close events), on this machine's observer."""

    def make_config(self, tmp_path: Path) -> dict[str, Any]:
        return {**super().make_config(tmp_path), "wait_for_close": False, "settle_s": 0.3}


@pytest.fixture
def open_source(src: Path, source_opener: Any) -> Callable[..., Any]:
    return lambda **options: source_opener("watchdog", src, **options)


def test_files_present_at_open_are_reported(src: Path, open_source: Any) -> None:
    (src / "x" / "y").mkdir(parents=True)
    (src / "a.dat").write_bytes(b"a")
    (src / "x" / "y" / "b.dat").write_bytes(b"b")
    events = collect_events(open_source(), ["a.dat", "x/y/b.dat"])
    assert {(e.relative_path, e.filename) for e in events} == {("", "a.dat"), ("x/y", "b.dat")}


def test_a_file_is_reported_when_closed_after_writing_not_before(src: Path, open_source: Any) -> None:
    source = open_source(scan_at_start=False)
    with open(src / "slow.dat", "wb") as slow:
        slow.write(b"first half")
        slow.flush()
        (src / "sentinel-1").write_bytes(b"")
        assert "slow.dat" not in ids(collect_events(source, ["sentinel-1"]))
        slow.write(b"second half")
    assert "slow.dat" in ids(collect_events(source, ["slow.dat"]))


def test_without_close_events_a_growing_file_waits_until_settled(src: Path, open_source: Any) -> None:
    source = open_source(scan_at_start=False, wait_for_close=False, settle_s=1.0)
    writer = SlowWriter(src / "growing.dat", total_s=2.0)
    writer.start()
    events: list[Any] = []
    while "growing.dat" not in ids(events):
        done_before = writer.done.is_set()
        batch = source.poll(50)
        assert done_before or "growing.dat" not in ids(batch), "reported while it was still growing"
        events += batch


def test_files_moved_in_and_directories_made_later_are_reported(src: Path, tmp_path: Path,
                                                                open_source: Any) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "low.dat").write_bytes(b"l")
    (tmp_path / "moved.dat").write_bytes(b"m")
    source = open_source(scan_at_start=False, ignore=["*.tmp"])
    os.rename(tmp_path / "moved.dat", src / "moved.dat")
    os.rename(outside, src / "run9")
    (src / "new" / "er").mkdir(parents=True)
    (src / "new" / "er" / "f.dat").write_bytes(b"f")
    (src / "frame.tmp").write_bytes(b"t")
    os.rename(src / "frame.tmp", src / "frame.cbf")
    expected = {"moved.dat", "run9/deep/low.dat", "new/er/f.dat", "frame.cbf"}
    assert ids(collect_events(source, expected)) == expected


def test_the_source_directory_vanishing_and_coming_back_is_watched_again(src: Path, tmp_path: Path,
                                                                         open_source: Any) -> None:
    source = open_source()
    (src / "before.dat").write_bytes(b"x")
    collect_events(source, ["before.dat"])
    os.rename(src, tmp_path / "away")
    wait_until(lambda: source.poll(20) == [] and source.vanished == 1, 20, what="the vanished root noticed")
    src.mkdir()
    (src / "early.dat").write_bytes(b"e")  # before the new watch, maybe: the rescan finds it
    events: list[Any] = []
    wait_until(lambda: events.extend(source.poll(20)) or source._watched is not None, 20, what="the new watch")
    (src / "later.dat").write_bytes(b"l")
    events += collect_events(source, {"early.dat", "later.dat"} - ids(events))
    assert {"early.dat", "later.dat"} <= ids(events)


def test_a_full_queue_rescans_logs_and_counts_instead_of_losing_events(src: Path, open_source: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    source = open_source(scan_at_start=False, queue_size=5)
    names = [f"f{n:03d}.dat" for n in range(50)]
    with caplog.at_level(logging.WARNING):
        for name in names:
            (src / name).write_bytes(b"x")
        wait_until(lambda: source._overflowed or source.overflows, 20, what="the queue to overflow")
        assert ids(collect_events(source, names)) == set(names)
    assert source.overflows >= 1
    assert "event queue overflowed" in caplog.text


def test_a_kernel_queue_overflow_reported_by_watchdog_rescans(src: Path, open_source: Any) -> None:
    (src / "lost.dat").write_bytes(b"x")  # before the watch and not scanned: as if its event had been dropped
    source = open_source(scan_at_start=False)
    # NOTE: what watchdog logs when the kernel dropped events, and the only sign of it it gives
    logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; filesystem events were lost")
    events = collect_events(source, ["lost.dat"])
    assert source.overflows == 1 and ids(events) == {"lost.dat"}


def test_wait_for_close_true_is_refused_where_there_are_no_close_events(src: Path) -> None:
    import hidra_watchdog.observer as module

    from hidra_core import DriverLoadFailure, create_driver

    if module.Observer is not module.InotifyObserver:
        with pytest.raises(DriverLoadFailure, match="no file closes"):
            create_driver("event source", "watchdog", {"path": str(src), "wait_for_close": True}, "<test>",
                          "sender.source.watchdog")
    else:
        create_driver("event source", "watchdog", {"path": str(src), "wait_for_close": True}, "<test>",
                      "sender.source.watchdog")


def test_a_tree_of_10000_files_at_start_is_reported_in_batches(src: Path, open_source: Any) -> None:
    names = [f"d{n // 1000}/f{n:05d}" for n in range(10_000)]
    for d in {n.split("/")[0] for n in names}:
        (src / d).mkdir()
    for rel in names:
        (src / rel).touch()
    source = open_source()
    missing = set(names)
    while missing:
        batch = source.poll(100)
        assert len(batch) <= 1000
        missing.difference_update(e.file_id for e in batch)


def test_hidra_plugins_lists_both_sources_as_loaded() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hidra_core", "plugins"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for name in ("watchdog", "polling"):
        [line] = [line for line in out.splitlines() if line.split()[:2] == ["hidra.event_sources", name]]
        assert "hidra-watchdog" in line and line.rstrip().endswith("ok"), line


def test_hostile_names_are_reported_as_the_inotify_source_does(src: Path, open_source: Any) -> None:
    source = open_source(scan_at_start=False)
    names = ["new\nline.dat", os.fsdecode(b"bad\xff byte.dat"), "l" * 250 + ".dat"]
    for name in names:
        with open(os.path.join(os.fsencode(src), os.fsencode(name)), "wb") as f:
            f.write(b"x")
    events = collect_events(source, names)
    assert {e.filename for e in events} == set(names)  # the sender refuses the undecodable one by name
