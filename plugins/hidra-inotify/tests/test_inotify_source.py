"""The ``inotify`` source on real directories: the event-source contract plus start-up scan, close_write,
moved_to, directories created after open, ignore patterns, non-recursive mode and queue overflow.

Negative checks never wait for time to pass: a sentinel file is written after the one that must not be reported,
and inotify delivers events in order, so once the sentinel is reported the other would have been too.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from inotify_simple import Event, flags

from hidra_core import DriverLoadFailure
from hidra_core import create_driver
from hidra_core.testing import TreeSourceContract, collect_events


class TestInotifyContract(TreeSourceContract):
    driver_name = "inotify"



@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.fixture
def open_source(src: Path, source_opener: Any) -> Any:
    """``open_source(**options)``: an opened inotify source on ``src``; closed after the test."""
    return lambda **options: source_opener("inotify", src, **options)


def _ids(events: list[Any]) -> set[str]:
    return {e.file_id for e in events}


def test_files_present_at_open_are_reported(src: Path, open_source: Any) -> None:
    (src / "x" / "y").mkdir(parents=True)
    (src / "a.dat").write_bytes(b"a")
    (src / "x" / "y" / "b.dat").write_bytes(b"b")
    source = open_source()
    events = collect_events(source, ["a.dat", "x/y/b.dat"])
    assert {(e.source_path, e.relative_path, e.filename) for e in events} == {
        (str(src), "", "a.dat"), (str(src), "x/y", "b.dat")}
    assert source.root == str(src)


def test_scan_at_start_off_reports_only_new_files(src: Path, open_source: Any) -> None:
    (src / "old.dat").write_bytes(b"old")
    source = open_source(scan_at_start=False)
    (src / "new.dat").write_bytes(b"new")
    assert _ids(collect_events(source, ["new.dat"])) == {"new.dat"}


def test_a_file_is_reported_when_closed_after_writing_not_before(src: Path, open_source: Any) -> None:
    source = open_source(scan_at_start=False)
    with open(src / "slow.dat", "wb") as slow:
        slow.write(b"first half")
        slow.flush()
        (src / "sentinel-1").write_bytes(b"")
        assert "slow.dat" not in _ids(collect_events(source, ["sentinel-1"]))
        slow.write(b"second half")
    assert "slow.dat" in _ids(collect_events(source, ["slow.dat"]))


def test_a_file_moved_into_the_tree_is_reported(src: Path, tmp_path: Path, open_source: Any) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "moved.dat").write_bytes(b"m")
    (src / "sub").mkdir()
    source = open_source(scan_at_start=False)
    os.rename(outside / "moved.dat", src / "sub" / "moved.dat")
    events = collect_events(source, ["sub/moved.dat"])
    assert [(e.relative_path, e.filename) for e in events] == [("sub", "moved.dat")]


def test_write_to_temp_name_then_rename_reports_only_the_final_name(src: Path, open_source: Any) -> None:
    source = open_source(ignore=["*.tmp"])
    (src / "frame.cbf.tmp").write_bytes(b"data")
    os.rename(src / "frame.cbf.tmp", src / "frame.cbf")
    assert _ids(collect_events(source, ["frame.cbf"])) == {"frame.cbf"}


def test_new_nested_directories_and_their_immediate_files_are_all_reported(src: Path, open_source: Any) -> None:
    source = open_source(scan_at_start=False)
    expected = []
    # Files land in each directory right after mkdir, before the source can have a watch on it: the scan the
    # source runs after adding the watch must find them.
    for run in range(10):
        for depth in range(1, 4):
            rel = "/".join(f"run{run}-l{d}" for d in range(depth))
            (src / rel).mkdir()
            for n in range(3):
                (src / rel / f"f{n}.dat").write_bytes(b"x")
                expected.append(f"{rel}/f{n}.dat")
    assert _ids(collect_events(source, expected)) == set(expected)
    (src / "run0-l0" / "later.dat").write_bytes(b"x")  # and the new directories are watched from now on
    assert "run0-l0/later.dat" in _ids(collect_events(source, ["run0-l0/later.dat"]))


def test_a_directory_tree_moved_in_is_reported(src: Path, tmp_path: Path, open_source: Any) -> None:
    prepared = tmp_path / "prepared"
    (prepared / "deep").mkdir(parents=True)
    (prepared / "top.dat").write_bytes(b"t")
    (prepared / "deep" / "low.dat").write_bytes(b"l")
    source = open_source(scan_at_start=False)
    os.rename(prepared, src / "run9")
    assert _ids(collect_events(source, ["run9/top.dat", "run9/deep/low.dat"])) == {
        "run9/top.dat", "run9/deep/low.dat"}


def test_a_directory_deleted_and_created_again_is_watched_again(src: Path, open_source: Any) -> None:
    (src / "d").mkdir()
    source = open_source(scan_at_start=False)
    (src / "d").rmdir()
    (src / "d").mkdir()
    (src / "d" / "f.dat").write_bytes(b"f")
    assert "d/f.dat" in _ids(collect_events(source, ["d/f.dat"]))


def test_ignore_patterns_apply_to_the_scan_and_to_events(src: Path, open_source: Any) -> None:
    for name in ("old.tmp", ".old-hidden", "old.dat"):
        (src / name).write_bytes(b"x")
    source = open_source(ignore=["*.tmp", ".*"])
    for name in ("new.tmp", ".new-hidden", "new.dat"):
        (src / name).write_bytes(b"x")
    assert _ids(collect_events(source, ["old.dat", "new.dat"])) == {"old.dat", "new.dat"}


def test_not_recursive_reports_only_the_top_directory(src: Path, open_source: Any) -> None:
    (src / "old-sub").mkdir()
    (src / "old-sub" / "a.dat").write_bytes(b"x")
    source = open_source(recursive=False)
    (src / "new-sub").mkdir()
    (src / "new-sub" / "b.dat").write_bytes(b"x")
    (src / "old-sub" / "c.dat").write_bytes(b"x")
    (src / "top.dat").write_bytes(b"x")
    assert _ids(collect_events(source, ["top.dat"])) == {"top.dat"}


def _drain_kernel_queue(source: Any) -> int:
    """Read and throw away every queued inotify event, as if the kernel had dropped them."""
    dropped = 0
    while batch := source._inotify.read(timeout=0):
        dropped += len(batch)
    return dropped


def test_queue_overflow_rescans_and_rewatches(src: Path, open_source: Any) -> None:
    source = open_source(scan_at_start=False)
    (src / "lost-dir").mkdir()  # created after open: its CREATE event is among those dropped below
    for name in ("lost-dir/a.dat", "lost-dir/b.dat", "top.dat"):
        (src / name).write_bytes(b"x")
    assert _drain_kernel_queue(source) > 0
    out: list[Any] = []
    # NOTE: white-box: feed the overflow event the kernel queues after dropping events.
    source._handle(Event(wd=-1, mask=flags.Q_OVERFLOW, cookie=0, name=""), out)
    assert out == [] and source.overflows == 1
    events = collect_events(source, ["lost-dir/a.dat", "lost-dir/b.dat", "top.dat"])
    assert _ids(events) == {"lost-dir/a.dat", "lost-dir/b.dat", "top.dat"}
    (src / "lost-dir" / "after.dat").write_bytes(b"x")  # the rescan also put a watch on the lost directory
    assert "lost-dir/after.dat" in _ids(collect_events(source, ["lost-dir/after.dat"]))


def test_real_queue_overflow_loses_no_file(src: Path, open_source: Any) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 40_000:
        pytest.skip(f"max_queued_events is {limit}; overflowing it would make this test slow")
    source = open_source(scan_at_start=False)
    count = limit // 2 + 500  # CREATE and CLOSE_WRITE per file: more events than the queue holds
    names = [f"f{n:05d}" for n in range(count)]
    for name in names:
        (src / name).write_bytes(b"")
    assert _ids(collect_events(source, names, timeout_s=20)) == set(names)
    assert source.overflows >= 1


def test_a_directory_moved_out_of_the_tree_is_no_longer_reported(src: Path, tmp_path: Path,
                                                                 open_source: Any) -> None:
    (src / "d").mkdir()
    source = open_source(scan_at_start=False)
    os.rename(src / "d", tmp_path / "gone")
    (tmp_path / "gone" / "f.dat").write_bytes(b"f")
    (src / "sentinel").write_bytes(b"")
    assert "d/f.dat" not in _ids(collect_events(source, ["sentinel"]))


def test_missing_directory_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(DriverLoadFailure, match="does not exist"):
        create_driver("event source", "inotify", {"path": str(tmp_path / "nope")}, "<test>",
                      "sender.source.inotify")



def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"private")
    secret.chmod(0o600)
    return secret


def _poll_until_logged(source: Any, caplog: pytest.LogCaptureFixture, lines: list[str]) -> list[Any]:
    """Every event reported until each of ``lines`` is in the log (the source said why it skipped)."""
    events: list[Any] = []
    deadline = time.monotonic() + 30
    while not all(line in caplog.text for line in lines):
        assert time.monotonic() < deadline, f"never logged {lines}: {caplog.text}"
        events += source.poll(50)
    return events + source.poll(0)


def test_symlinks_found_by_the_scan_are_skipped_with_a_log_line(src: Path, tmp_path: Path, open_source: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    (src / "secret.txt").symlink_to(_secret(tmp_path))
    (src / "hostname").symlink_to("/etc/hostname")
    (src / "plain.dat").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        events = _poll_until_logged(open_source(), caplog, [f"skipping symlink {src / 'secret.txt'}",
                                                            f"skipping symlink {src / 'hostname'}"])
    assert _ids(events) <= {"plain.dat"}


def test_symlinks_moved_into_the_tree_are_skipped_with_a_log_line(src: Path, tmp_path: Path, open_source: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    source = open_source(scan_at_start=False)
    (tmp_path / "outside-link").symlink_to(_secret(tmp_path))
    (tmp_path / "host-link").symlink_to("/etc/hostname")
    with caplog.at_level("WARNING"):
        os.rename(tmp_path / "outside-link", src / "secret.txt")
        os.rename(tmp_path / "host-link", src / "hostname")
        (src / "sentinel").write_bytes(b"")
        events = collect_events(source, ["sentinel"])
    assert _ids(events) == {"sentinel"}
    assert f"skipping symlink {src / 'secret.txt'}" in caplog.text
    assert f"skipping symlink {src / 'hostname'}" in caplog.text


def test_follow_symlinks_reports_only_links_to_files_inside_the_tree(src: Path, tmp_path: Path, open_source: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    (src / "data").mkdir()
    (src / "data" / "frame.cbf").write_bytes(b"frame")
    (src / "latest.cbf").symlink_to(src / "data" / "frame.cbf")
    (src / "escape.txt").symlink_to(_secret(tmp_path))
    (src / "dots.txt").symlink_to("data/../../outside/secret.txt")
    with caplog.at_level("WARNING"):
        events = _poll_until_logged(open_source(follow_symlinks=True), caplog, [
            f"skipping symlink {src / 'escape.txt'}", f"skipping symlink {src / 'dots.txt'}"])
        events += collect_events(open_source(follow_symlinks=True, ignore=["*.txt"]), ["latest.cbf"])
    latest = [e for e in events if e.file_id == "latest.cbf"]
    assert latest and all(e.extra == {"link_target": "data/frame.cbf"} for e in latest)
    assert not {"escape.txt", "dots.txt"} & _ids(events)
