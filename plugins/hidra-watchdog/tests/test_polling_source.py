"""The ``polling`` source on real directories: the event-source contract, settling (a growing file is never
reported early), rewrites reported again, a vanishing root, hostile names, symlinks and a big tree at start-up.

Negative checks never wait for time to pass: they hold until something that must come later has been reported
(the end of a slow writer, a sentinel file that settled after the file in question)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from watchdog_support import SlowWriter, ids

from hidra_core.testing import TreeSourceContract, collect_events

FAST = {"settle_s": 0.3, "interval_s": 0.05}


class TestPollingContract(TreeSourceContract):
    driver_name = "polling"
    timeout_s = 20.0

    def make_config(self, tmp_path: Path) -> dict[str, Any]:
        return {**super().make_config(tmp_path), **FAST}


@pytest.fixture
def open_source(src: Path, source_opener: Any) -> Callable[..., Any]:
    return lambda **options: source_opener("polling", src, **options)


def test_files_present_at_start_are_reported_once_settled(src: Path, open_source: Any) -> None:
    (src / "x" / "y").mkdir(parents=True)
    (src / "a.dat").write_bytes(b"a")
    (src / "x" / "y" / "b.dat").write_bytes(b"b")
    source = open_source(**FAST)
    events = collect_events(source, ["a.dat", "x/y/b.dat"])
    assert {(e.source_path, e.relative_path, e.filename) for e in events} == {
        (str(src), "", "a.dat"), (str(src), "x/y", "b.dat")}


def test_a_file_growing_for_3_s_is_not_reported_before_it_stops_growing(src: Path, open_source: Any) -> None:
    source = open_source(interval_s=0.05)  # settle_s at its default
    writer = SlowWriter(src / "growing.dat", total_s=3.0)
    writer.start()
    events: list[Any] = []
    while "growing.dat" not in ids(events):
        done_before = writer.done.is_set()
        batch = source.poll(50)
        assert done_before or "growing.dat" not in ids(batch), "reported while it was still growing"
        events += batch
    assert (src / "growing.dat").stat().st_size == writer.size == 60 * 1000


def test_a_file_rewritten_after_it_was_reported_is_reported_again(src: Path, open_source: Any) -> None:
    (src / "r.dat").write_bytes(b"first")
    source = open_source(full_scan_s=0.5, **FAST)
    collect_events(source, ["r.dat"])
    with open(src / "r.dat", "r+b") as f:  # in place: the directory does not change, only the sweep sees it
        f.write(b"second version")
    assert "r.dat" in ids(collect_events(source, ["r.dat"]))
    os.rename(src / "r.dat", src / "moved.dat")
    (src / "r.dat").write_bytes(b"third")  # a new file under the old name: the directory changes
    assert {"r.dat", "moved.dat"} <= ids(collect_events(source, ["r.dat", "moved.dat"]))


def test_the_source_directory_vanishing_and_coming_back_is_survived(src: Path, tmp_path: Path,
                                                                    open_source: Any) -> None:
    (src / "before.dat").write_bytes(b"x")
    source = open_source(**FAST)
    collect_events(source, ["before.dat"])
    os.rename(src, tmp_path / "away")
    from hidra_core.testing import wait_until

    wait_until(lambda: source.poll(20) == [] and source.vanished == 1, 20, what="the vanished root noticed")
    src.mkdir()
    (src / "sub").mkdir()
    (src / "sub" / "after.dat").write_bytes(b"y")
    assert ids(collect_events(source, ["sub/after.dat"])) >= {"sub/after.dat"}


def test_a_subdirectory_removed_and_made_again_is_listed_again(src: Path, open_source: Any) -> None:
    (src / "d").mkdir()
    source = open_source(**FAST)
    (src / "d" / "one.dat").write_bytes(b"1")
    collect_events(source, ["d/one.dat"])
    (src / "d" / "one.dat").unlink()
    (src / "d").rmdir()
    (src / "d").mkdir()
    (src / "d" / "two.dat").write_bytes(b"2")
    assert "d/two.dat" in ids(collect_events(source, ["d/two.dat"]))


def test_ignore_and_scan_at_start_work_as_for_inotify(src: Path, open_source: Any) -> None:
    (src / "old.dat").write_bytes(b"x")
    source = open_source(scan_at_start=False, ignore=["*.tmp"], **FAST)
    (src / "new.tmp").write_bytes(b"x")
    (src / "new.dat").write_bytes(b"x")
    events = collect_events(source, ["new.dat"])
    (src / "sentinel").write_bytes(b"x")
    events += collect_events(source, ["sentinel"])
    assert ids(events) == {"new.dat", "sentinel"}


def test_hostile_names_are_reported_as_the_inotify_source_does(src: Path, open_source: Any) -> None:
    names = ["new\nline.dat", os.fsdecode(b"bad\xff byte.dat"), "l" * 250 + ".dat"]
    for name in names:
        with open(os.path.join(os.fsencode(src), os.fsencode(name)), "wb") as f:
            f.write(b"x")
    events = collect_events(open_source(**FAST), names)
    assert {e.filename for e in events} == set(names)  # the sender refuses the undecodable one by name


def test_symlinks_are_not_followed_out_of_the_tree(src: Path, tmp_path: Path, open_source: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "secret").write_bytes(b"private")
    (tmp_path / "outside-dir").mkdir()
    (tmp_path / "outside-dir" / "f.dat").write_bytes(b"f")
    (src / "link.dat").symlink_to(tmp_path / "secret")
    (src / "dirlink").symlink_to(tmp_path / "outside-dir")
    (src / "inside.dat").write_bytes(b"i")
    (src / "to-inside.dat").symlink_to(src / "inside.dat")
    with caplog.at_level("WARNING"):
        events = collect_events(open_source(follow_symlinks=True, **FAST), ["inside.dat", "to-inside.dat"])
    assert ids(events) == {"inside.dat", "to-inside.dat"}
    assert f"skipping symlink {src / 'link.dat'}" in caplog.text


def _tree(src: Path, files: int, per_dir: int = 1000) -> list[str]:
    names = []
    for n in range(files):
        rel = f"d{n // per_dir:03d}/f{n:06d}"
        names.append(rel)
    for d in {n.split("/")[0] for n in names}:
        (src / d).mkdir()
    for rel in names:
        (src / rel).touch()
    return names


def _scan_in_slices(source: Any, names: list[str]) -> None:
    """Every file reported, and no single poll taking long (each returns a bounded batch)."""
    missing = set(names)
    deadline = time.monotonic() + 600
    while missing:
        assert time.monotonic() < deadline, f"{len(missing)} never reported"
        batch = source.poll(100)
        assert len(batch) <= 1000
        missing.difference_update(e.file_id for e in batch)


def test_a_tree_of_10000_files_at_start_is_reported_in_batches(src: Path, open_source: Any) -> None:
    _scan_in_slices(open_source(**FAST), _tree(src, 10_000))


@pytest.mark.slow
def test_a_tree_of_100000_files_at_start_is_reported_in_batches(src: Path, open_source: Any) -> None:
    _scan_in_slices(open_source(**FAST), _tree(src, 100_000))


def test_an_idle_tree_is_not_polled_in_a_busy_loop(src: Path, open_source: Any) -> None:
    """Once the start-up work is done, a poll with nothing due waits its whole timeout (the source used to spin
    while a sweep was under way: a full core on an idle tree)."""
    _tree(src, 2000)
    source = open_source(scan_at_start=False, interval_s=30, full_scan_s=3600)
    source.poll(0)  # the first sweep starts: from now on it is paced, one slice per 200 files' worth of time
    calls, end = 0, time.monotonic() + 1.0
    while time.monotonic() < end:
        assert source.poll(100) == []
        calls += 1
    assert calls <= 11, f"{calls} polls of 100 ms in one second"
