"""The ``pilatus`` source on real directories with real inotify: CBF and TIFF images written by fabio in both camserver
patterns, their headers in the metadata as written, and every kind of bad file still reported.

Negative checks never wait for time to pass: a sentinel file is written after the one that must not be reported,
and inotify delivers events in order, so once the sentinel is reported the other would have been too.
"""
from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from pilatus_support import HEADER, assert_metadata

from hidra_core import DriverLoadFailure, create_driver
from hidra_core.testing import TreeSourceContract, collect_events
from hidra_pilatus.sim import camserver_header, image_bytes, write_image

SHAPE = (195, 487)


class TestPilatusContract(TreeSourceContract):
    driver_name = "pilatus"

    def file_content(self, filename: str) -> bytes:
        return image_bytes(HEADER, SHAPE) if filename.endswith(".cbf") else b"contract"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.fixture
def open_source(src: Path, source_opener: Any) -> Any:
    """``open_source(**options)``: an opened pilatus source on ``src``; closed after the test."""
    return lambda **options: source_opener("pilatus", src, **options)


def _by_id(events: list[Any]) -> dict[str, Any]:
    return {e.file_id: e for e in events}


def test_cbf_header_values_reach_the_metadata_as_written(src: Path, open_source: Any) -> None:
    (src / "scan1").mkdir()
    write_image(str(src / "scan1" / "lyso_7_00042.cbf"), image_bytes(HEADER, SHAPE))
    event = _by_id(collect_events(open_source(), ["scan1/lyso_7_00042.cbf"]))["scan1/lyso_7_00042.cbf"]
    assert_metadata(dict(event.metadata), shape=SHAPE)
    assert (event.metadata["series"], event.metadata["frame"], event.series) == ("lyso_7", 42, "lyso_7")


def test_tiff_header_values_reach_the_metadata_as_written(src: Path, open_source: Any) -> None:
    source = open_source()
    write_image(str(src / "tif_00003.tif"), image_bytes(HEADER, SHAPE, tiff=True))
    event = _by_id(collect_events(source, ["tif_00003.tif"]))["tif_00003.tif"]
    assert_metadata(dict(event.metadata), fmt="tiff", shape=SHAPE)
    assert event.metadata["frame"] == 3


def _write_slowly_while_checking(source: Any, src: Path, name: str, pattern: str) -> list[Any]:
    """Write a CBF in 8 pieces (in place, or under a temp name then renamed); after each piece a sentinel proves
    nothing was reported yet. Returns the events up to the image's."""
    data = image_bytes(HEADER, SHAPE, seed=5)
    target = src / name if pattern == "in_place" else src / f".{name}.tmp"
    step = -(-len(data) // 8)
    with open(target, "wb") as f:
        for n, offset in enumerate(range(0, len(data), step)):
            f.write(data[offset:offset + step])
            f.flush()
            (src / f"sentinel-{n}").write_bytes(b"")
            early = collect_events(source, [f"sentinel-{n}"])
            assert not {name, target.name} & {e.filename for e in early}, f"reported after piece {n}"
    if pattern == "rename":
        os.rename(target, src / name)
    events = collect_events(source, [name])
    assert (src / name).read_bytes() == data
    return events


@pytest.mark.parametrize("pattern", ["in_place", "rename"])
def test_an_image_written_slowly_is_reported_only_once_complete(src: Path, open_source: Any, pattern: str) -> None:
    source = open_source()
    assert source.poll(0) == []  # NOTE: the start-up scan is done, so only inotify can report the image
    events = _write_slowly_while_checking(source, src, "slow_00001.cbf", pattern)
    images = [e for e in events if e.filename.endswith(".cbf") or ".tmp" in e.filename]
    assert [e.filename for e in images] == ["slow_00001.cbf"], "a temp name or a duplicate was reported"
    assert_metadata(dict(images[0].metadata), shape=SHAPE)
    assert source.stats["temp_names"] == (1 if pattern == "rename" else 0)


def test_temp_patterns_are_configurable(src: Path, open_source: Any) -> None:
    source = open_source(temp_patterns=["*.writing"])
    data = image_bytes(HEADER, SHAPE)
    (src / "a_00001.cbf.writing").write_bytes(data)
    os.rename(src / "a_00001.cbf.writing", src / "a_00001.cbf")
    (src / ".hidden_00002.cbf").write_bytes(data)  # not a temp name any more
    events = collect_events(source, ["a_00001.cbf", ".hidden_00002.cbf"])
    assert "a_00001.cbf.writing" not in _by_id(events)
    assert_metadata(dict(_by_id(events)[".hidden_00002.cbf"].metadata), shape=SHAPE)


def test_other_files_are_sent_without_header_and_a_custom_name_pattern_applies(src: Path, open_source: Any) -> None:
    source = open_source(name_pattern=r"^(?P<series>[a-z]+)-(?P<frame>\d+)\.cbf$")
    assert source.poll(0) == []  # the start-up scan is done: each file is reported once, by inotify
    (src / "notes.txt").write_text("beamline log")
    (src / "run-17.cbf").write_bytes(image_bytes(HEADER, SHAPE))
    (src / "run_00017.cbf").write_bytes(image_bytes(HEADER, SHAPE))
    events = _by_id(collect_events(source, ["notes.txt", "run-17.cbf", "run_00017.cbf"]))
    assert events["notes.txt"].metadata == {}
    assert (events["run-17.cbf"].metadata["series"], events["run-17.cbf"].metadata["frame"]) == ("run", 17)
    assert "frame" not in events["run_00017.cbf"].metadata and events["run_00017.cbf"].series == ""
    assert_metadata(dict(events["run_00017.cbf"].metadata), shape=SHAPE)
    assert source.stats["other_files"] == 1


def _looping_tiff() -> bytes:
    """A TIFF whose first directory names itself as the next one: a reader that follows the chain never ends."""
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 0) + struct.pack("<I", 8)


def _bad_files() -> dict[str, tuple[bytes, str]]:
    cbf = image_bytes(HEADER, SHAPE)
    binary = cbf.index(b"--CIF-BINARY-FORMAT-SECTION--")
    return {
        "empty_00001.cbf": (b"", "empty file"),
        "text_00002.cbf": (b"this is not an image\n" * 10, "neither CBF nor TIFF"),
        "header-only_00003.cbf": (cbf[:binary - 10], f"no binary section: the file ends after {binary - 10} bytes"),
        "cut_00004.cbf": (cbf[:binary + 100], f"does not end: the file ends after {binary + 100} bytes"),
        "huge-header_00005.cbf": (cbf[:200] + b"#" * 70_000 + cbf[200:],
                                  "no binary section: not within the first 65536 bytes (max_header_bytes)"),
        "loop_00006.tif": (_looping_tiff(), "round in circles"),
        "cut_00007.tif": (image_bytes(HEADER, SHAPE, tiff=True)[:20], "the TIFF header is incomplete"),
        "garbage_00008.cbf": (b"###CBF: VERSION 1.5\n" + bytes(range(256)) * 300, "no binary section"),
    }


def test_corrupt_truncated_and_foreign_files_are_reported_with_a_metadata_error(
        src: Path, open_source: Any, caplog: pytest.LogCaptureFixture) -> None:
    source = open_source()
    assert source.poll(0) == []
    bad = _bad_files()
    for name, (data, _why) in bad.items():
        (src / name).write_bytes(data)
    with caplog.at_level("WARNING"):
        events = _by_id(collect_events(source, list(bad)))
    for name, (_data, why) in bad.items():
        error = events[name].metadata.get("metadata_error", "")
        assert why.lower() in error.lower(), (name, error)
        assert events[name].metadata["frame"] == int(name[-9:-4]), name
        assert repr(str(src / name)) in caplog.text, f"no log line names {name}"
    assert source.stats["metadata_errors"] == len(bad)
    assert source.stats["images"] == 0


def test_a_header_line_fabio_cannot_parse_loses_only_itself(src: Path, open_source: Any) -> None:
    odd = HEADER.replace("# Gain_setting:", "# Oddity\r\n# Gain_setting:")
    (src / "odd_00001.cbf").write_bytes(image_bytes(odd, SHAPE))
    meta = _by_id(collect_events(open_source(), ["odd_00001.cbf"]))["odd_00001.cbf"].metadata
    assert meta["exposure_time_s"] == 0.0123 and meta["gain_setting"] == "mid gain"
    assert "Oddity" in meta["header"]


def test_header_text_is_bounded_and_non_finite_values_are_null(src: Path, open_source: Any) -> None:
    header = camserver_header(exposure_time=float("nan")) + "\r\n# Flux " + "9" * 5000
    (src / "big_00001.cbf").write_bytes(image_bytes(header, SHAPE))
    meta = _by_id(collect_events(open_source(max_header_text=100), ["big_00001.cbf"]))["big_00001.cbf"].metadata
    assert len(meta["header"]) == 100 and meta["header_truncated"] is True
    assert meta["exposure_time_s"] is None and "metadata_error" not in meta


HOSTILE = ["with space_00001.cbf", "ünïcödé_00002.cbf", "-rf_00003.cbf", "new\nline_00004.cbf",
           "$(touch pwned)_00005.cbf", "quote'\"_00006.cbf", "x" * 240 + "_00007.cbf", "tab\there_00008.cbf"]


def test_hostile_names_are_reported_with_their_metadata(src: Path, open_source: Any) -> None:
    source = open_source()
    data = image_bytes(HEADER, SHAPE)
    for name in HOSTILE:
        write_image(str(src / name), data, "rename")
    events = _by_id(collect_events(source, HOSTILE))
    for n, name in enumerate(HOSTILE, start=1):
        assert_metadata(dict(events[name].metadata), shape=SHAPE)
        assert events[name].metadata["frame"] == n
    assert not (src / "pwned").exists() and not (Path.cwd() / "pwned").exists()


def test_a_fifo_a_directory_and_an_undecodable_name_never_block_the_source(src: Path, open_source: Any) -> None:
    source = open_source()
    os.mkfifo(src / "pipe_00001.cbf")
    os.close(os.open(src / "pipe_00001.cbf", os.O_RDWR))  # NOTE: closed after writing: inotify reports it
    (src / "dir_00002.cbf").mkdir()
    raw = os.fsencode(str(src)) + b"/\xff\xfe_00003.cbf"
    with open(raw, "wb") as f:
        f.write(image_bytes(HEADER, SHAPE))
    (src / "after_00004.cbf").write_bytes(image_bytes(HEADER, SHAPE))
    undecodable = os.fsdecode(b"\xff\xfe_00003.cbf")
    events = _by_id(collect_events(source, ["pipe_00001.cbf", undecodable, "after_00004.cbf"]))
    assert events["pipe_00001.cbf"].metadata["metadata_error"] == "not a regular file"
    assert "dir_00002.cbf" not in events
    assert_metadata(dict(events[undecodable].metadata), shape=SHAPE)
    assert_metadata(dict(events["after_00004.cbf"].metadata), shape=SHAPE)


def test_images_written_from_another_thread_during_polls_all_arrive_complete(src: Path, open_source: Any) -> None:
    source = open_source()
    assert source.poll(0) == []  # NOTE: the start-up scan is done: it would report an image being written
    names = [f"burst_{n:05d}.cbf" for n in range(1, 21)]
    data = image_bytes(HEADER, SHAPE)

    def camserver() -> None:
        for n, name in enumerate(names):
            write_image(str(src / name), data, "rename" if n % 2 else "in_place", pieces=4)

    writer = threading.Thread(target=camserver)
    writer.start()
    try:
        events = _by_id(collect_events(source, names))
    finally:
        writer.join(30)
    for n, name in enumerate(names, start=1):
        assert_metadata(dict(events[name].metadata), shape=SHAPE)
        assert events[name].metadata["frame"] == n
    assert source.stats["metadata_errors"] == 0


@pytest.mark.parametrize(("options", "message"), [
    ({"watch": {"type": "inotify", "inotify": {"bogus": 1}}}, "sender.source.pilatus.watch.inotify.bogus"),
    ({"watch": {"type": "no_such_source"}}, "no_such_source"),
    ({"watch": {"type": "inotify", "inotify": {"path": "/x"}}}, "not as watch.inotify.path"),
    ({"name_pattern": r"^(?P<frame>\d+)$"}, "(?P<series>...)"),
    ({"name_pattern": "(unclosed"}, "not a regular expression"),
])
def test_bad_options_are_refused_naming_the_key(src: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception) as info:
        create_driver("event source", "pilatus", {"path": str(src), **options}, "<test>", "sender.source.pilatus")
    assert message in str(info.value)


def test_missing_directory_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(DriverLoadFailure, match="does not exist"):
        create_driver("event source", "pilatus", {"path": str(tmp_path / "nope")}, "<test>", "sender.source.pilatus")


def test_inotify_options_pass_through_to_the_watching_source(src: Path, open_source: Any) -> None:
    (src / "old_00001.cbf").write_bytes(image_bytes(HEADER, SHAPE))
    source = open_source(watch={"type": "inotify", "inotify": {"scan_at_start": False, "ignore": ["*.h5"]}})
    (src / "skip.h5").write_bytes(b"h5")
    (src / "new_00002.cbf").write_bytes(image_bytes(HEADER, SHAPE))
    assert set(_by_id(collect_events(source, ["new_00002.cbf"]))) == {"new_00002.cbf"}
    assert source.root == str(src)


def _has_source(name: str) -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == name for ep in entry_points(group="hidra.event_sources"))


@pytest.mark.skipif(not _has_source("polling"), reason="the polling source (hidra-watchdog) is not installed")
def test_polling_watch_for_a_network_share(src: Path, open_source: Any) -> None:
    source = open_source(watch={"type": "polling"})
    write_image(str(src / "share_00001.cbf"), image_bytes(HEADER, SHAPE), "rename")
    event = _by_id(collect_events(source, ["share_00001.cbf"], timeout_s=60))["share_00001.cbf"]
    assert_metadata(dict(event.metadata), shape=SHAPE)


def test_an_image_open_for_writing_at_start_up_is_reported_again_complete_when_closed(src: Path,
                                                                                      open_source: Any) -> None:
    data = image_bytes(HEADER, SHAPE)
    with open(src / "early_00001.cbf", "wb") as f:
        f.write(data[:300])  # the camserver is half way through its header when the sender starts
        f.flush()
        first = _by_id(collect_events(open_source(), ["early_00001.cbf"]))["early_00001.cbf"]
        f.write(data[300:])
    assert first.metadata["metadata_error"].startswith("no binary section: the file ends after 300 bytes")
    source = open_source(watch={"type": "inotify", "inotify": {"scan_at_start": False}})
    with open(src / "early_00001.cbf", "r+b") as f:  # NOTE: the close of the write above fired before this watch
        f.write(data[:1])
    again = _by_id(collect_events(source, ["early_00001.cbf"]))["early_00001.cbf"]
    assert_metadata(dict(again.metadata), shape=SHAPE)


def test_a_followed_symlink_has_the_metadata_of_its_target(src: Path, open_source: Any) -> None:
    (src / "data").mkdir()
    (src / "data" / "img_00005.cbf").write_bytes(image_bytes(HEADER, SHAPE))
    (src / "latest_00005.cbf").symlink_to(src / "data" / "img_00005.cbf")
    source = open_source(watch={"type": "inotify", "inotify": {"follow_symlinks": True}})
    event = _by_id(collect_events(source, ["latest_00005.cbf"]))["latest_00005.cbf"]
    assert_metadata(dict(event.metadata), shape=SHAPE)


def test_hidra_plugins_lists_the_pilatus_source() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hidra_core", "plugins"], capture_output=True, text=True, timeout=60)
    line = next(line for line in out.stdout.splitlines() if " pilatus " in line)
    assert line.split()[:3] == ["hidra.event_sources", "pilatus", "hidra-pilatus"] and line.split()[-1] == "ok"


def test_a_large_batch_is_handed_over_in_parts_and_nothing_is_lost(src: Path, open_source: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import hidra_pilatus.source

    names = [f"many_{n:05d}.cbf" for n in range(1, 6)]
    for name in names:
        (src / name).write_bytes(image_bytes(HEADER, SHAPE))
    monkeypatch.setattr(hidra_pilatus.source, "POLL_BUDGET_S", 0.0)  # NOTE: every poll's budget is spent at once
    source = open_source()
    batches = [source.poll(50) for _ in names]
    assert [len(batch) for batch in batches] == [1] * len(names)  # in the scan's (directory) order
    assert sorted((e.filename, e.metadata["frame"]) for (e,) in batches) == [(n, int(n[5:10])) for n in names]
