"""The ``eiger`` source in this process against ``hidra-eiger-sim`` in its own (real HTTP): the event source
contract, listing shapes, change detection and name reuse, partial files, hostile names, lost files, low buffer."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq
from test_sim_filewriter import Dcu

from hidra_core import FileEvent, create_driver
from hidra_core.testing import EventSourceContract, collect_events, wait_until

FAST = {"poll_s": 0.05, "reannounce_s": 60, "buffer_check_s": 0.05}


def source_of(dcu: Dcu, **options: Any) -> Any:
    return create_driver("event source", "eiger", {"url": dcu.url, **FAST, **options}, "<test>", "sender.source.eiger")


@pytest.fixture
def dcu() -> Iterator[Dcu]:
    sim = Dcu()
    yield sim
    sim.close()


@pytest.fixture
def opened(dcu: Dcu) -> Iterator[Any]:
    source = source_of(dcu)
    source.open(zmq.Context.instance())
    try:
        yield source
    finally:
        source.close()


def ids(events: list[FileEvent]) -> list[str]:
    return [e.file_id for e in events]


def drain(source: Any, rounds: int = 10) -> list[FileEvent]:
    """Events of the next ``rounds`` listings (a round each ``poll_s``)."""
    out: list[FileEvent] = []
    start = source.stats["listings"]
    wait_until(lambda: out.extend(source.poll(20)) or source.stats["listings"] >= start + rounds, 30,
               what=f"{rounds} listings")
    return out


class TestEigerSourceContract(EventSourceContract):
    driver_name = "eiger"

    @pytest.fixture(autouse=True)
    def _sim(self, dcu: Dcu) -> None:
        self.dcu = dcu

    def make_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"url": self.dcu.url, **FAST}

    def produce(self, tmp_path: Path, relative_path: str, filename: str) -> None:
        self.dcu.put_file(f"{relative_path}/{filename}" if relative_path else filename, b"contract")


@pytest.mark.parametrize("version", ["1.6.0", "1.8.0"])
def test_files_of_both_listing_shapes_are_reported_with_their_series(version: str) -> None:
    dcu = Dcu("--api-version", version)
    source = source_of(dcu)
    try:
        source.open(zmq.Context.instance())
        assert drain(source, 3) == []  # NOTE: 1.8 lists null while empty: no error, no event
        assert source.stats["listing_errors"] == 0
        dcu.put_file("raw/series_3_data_000001.h5", b"d" * 1000)
        dcu.put_file("raw/series_3_master.h5", b"m" * 10)
        events = collect_events(source, ["raw/series_3_data_000001.h5", "raw/series_3_master.h5"], 30)
        data = next(e for e in events if e.filename == "series_3_data_000001.h5")
        assert (data.source_path, data.relative_path, data.series, data.size) == (
            f"{dcu.url}/data", "raw", "raw/series_3", 1000)
        assert data.metadata == {"series": "raw/series_3", "api_version": version}
        assert data.extra["url"] == f"{dcu.url}/data/raw/series_3_data_000001.h5"
        assert data.extra["content_length"] == 1000
    finally:
        source.close()
        dcu.close()


def test_files_listed_at_start_are_reported_first(dcu: Dcu) -> None:
    for i in range(3):
        dcu.put_file(f"old_{i}.bin", b"o" * 100)
    source = source_of(dcu)
    source.open(zmq.Context.instance())
    try:
        first = collect_events(source, [f"old_{i}.bin" for i in range(3)], 30)
        dcu.put_file("new.bin", b"n")
        later = collect_events(source, ["new.bin"], 30)
        assert ids(first) == [f"old_{i}.bin" for i in range(3)] and ids(later) == ["new.bin"]
    finally:
        source.close()


def test_a_growing_file_is_reported_once_complete(dcu: Dcu, opened: Any) -> None:
    dcu.put("simulator", "grow_s", 1.5)
    dcu.command("simulator", "put_file", {"path": "grows.bin", "size": 300_000})
    events = collect_events(opened, ["grows.bin"], 30)
    assert events[-1].size == 300_000, "a file was reported before it stopped growing"


def test_a_data_file_is_taken_once_a_later_one_of_its_series_is_listed(dcu: Dcu, opened: Any) -> None:
    dcu.put("simulator", "grow_s", 3600)  # NOTE: stays growing: only the later file can tell it is complete
    dcu.command("simulator", "put_file", {"path": "s_1_data_000001.h5", "size": 1000})
    assert drain(opened, 5) == []
    dcu.command("simulator", "put_file", {"path": "s_1_data_000002.h5", "size": 1000})
    assert ids(collect_events(opened, ["s_1_data_000001.h5"], 30)) == ["s_1_data_000001.h5"]
    assert ids(drain(opened, 5)) == []


def test_the_master_is_taken_only_after_its_series_ended(dcu: Dcu, opened: Any) -> None:
    dcu.put("simulator", "file_content", "random")
    dcu.put("simulator", "random_file_bytes", 1000)
    dcu.put("simulator", "buffer_bytes", 2500)  # NOTE: the series stalls in 'acquire' after its second file
    trigger = threading.Thread(target=dcu.series, args=(4, 1))
    trigger.start()
    try:
        wait_until(lambda: dcu.status("detector", "state") == "acquire" and "series_1_master.h5" in dcu.names(),
                   30, what="a stalled series")
        events = drain(opened, 6)
        assert "series_1_data_000001.h5" in ids(events) and "series_1_master.h5" not in ids(events)
    finally:
        dcu.put("simulator", "buffer_bytes", 0)
        trigger.join(30)
    assert "series_1_master.h5" in ids(collect_events(opened, ["series_1_master.h5"], 30))


def test_a_reused_name_is_new_work_once_it_left_the_listing(dcu: Dcu, opened: Any) -> None:
    dcu.put_file("again.h5", b"first")
    assert ids(collect_events(opened, ["again.h5"], 30)) == ["again.h5"]
    dcu.request("DELETE", "/data/again.h5")
    drain(opened, 2)
    dcu.put_file("again.h5", b"second version")
    assert collect_events(opened, ["again.h5"], 30)[-1].size == len(b"second version")


def test_listed_files_are_announced_again_while_listed(dcu: Dcu) -> None:
    source = source_of(dcu, reannounce_s=0.2)
    source.open(zmq.Context.instance())
    try:
        dcu.put_file("kept.h5", b"k")
        collect_events(source, ["kept.h5"], 30)
        assert ids(collect_events(source, ["kept.h5"], 30)) == ["kept.h5"]
        assert source.stats["reannounced"] >= 1
    finally:
        source.close()


def test_hostile_listing_names_are_refused_logged_once_and_never_reported(
        dcu: Dcu, opened: Any, caplog: pytest.LogCaptureFixture) -> None:
    hostile = ["../escape.h5", "/etc/abs.h5", "a//b.h5", "dir/../../x.h5", "back\\slash.h5", "ctl\x07.h5"]
    for name in hostile:
        dcu.put_file(name, b"evil")
    dcu.put_file("fine.h5", b"ok")
    with caplog.at_level(logging.WARNING, "hidra_eiger"):
        events = collect_events(opened, ["fine.h5"], 30) + drain(opened, 5)
    assert set(ids(events)) == {"fine.h5"}
    assert opened.stats["refused"] == len(hostile)
    for name in hostile:
        assert sum(repr(name) in r.getMessage() for r in caplog.records) == 1, name


def test_files_wiped_before_hidra_had_a_copy_are_reported_lost_by_name(
        dcu: Dcu, opened: Any, caplog: pytest.LogCaptureFixture) -> None:
    names = ["series_5_master.h5", "series_5_data_000001.h5", "series_5_data_000002.h5"]
    for name in names:
        dcu.put_file(name, b"x" * 10)
    collect_events(opened, names[1:], 30)
    with caplog.at_level(logging.ERROR, "hidra_eiger"):
        dcu.command("simulator", "reboot")
        wait_until(lambda: opened.poll(20) is not None and opened.stats["lost"], 30, what="the loss report")
    assert opened.stats["lost"] == 3
    message = next(r.getMessage() for r in caplog.records if "LOST" in r.getMessage())
    assert all(name in message for name in names), message


def test_listing_errors_keep_the_state_and_are_retried(dcu: Dcu, opened: Any) -> None:
    dcu.put_file("one.h5", b"1")
    collect_events(opened, ["one.h5"], 30)
    dcu.put("simulator", "listing_fail_every", 2)
    dcu.put_file("two.h5", b"2")
    assert ids(collect_events(opened, ["two.h5"], 30)) == ["two.h5"], "a listing error made old files new work"
    wait_until(lambda: opened.poll(20) is not None and opened.stats["listing_errors"] >= 2, 30,
               what="listing errors")
    assert opened.stats["lost"] == 0


def test_low_dcu_buffer_is_warned_once_and_again_after_recovering(
        dcu: Dcu, opened: Any, caplog: pytest.LogCaptureFixture) -> None:
    dcu.put("simulator", "buffer_bytes", 10_000)
    with caplog.at_level(logging.WARNING, "hidra_eiger"):
        dcu.put_file("big.h5", b"b" * 9_000)
        wait_until(lambda: opened.poll(20) is not None and opened.stats["low_buffer"] == 1, 30, what="the warning")
        drain(opened, 5)
        assert opened.stats["low_buffer"] == 1
        dcu.request("DELETE", "/data/big.h5")
        drain(opened, 5)
        dcu.put_file("big2.h5", b"b" * 9_500)
        wait_until(lambda: opened.poll(20) is not None and opened.stats["low_buffer"] == 2, 30, what="the second one")
    assert sum("buffer free" in r.getMessage() for r in caplog.records) == 2


def test_a_file_whose_head_fails_does_not_hold_up_the_listing(dcu: Dcu, opened: Any) -> None:
    dcu.put("simulator", "fail_every", 2)  # NOTE: every second /data request answers 500
    names = [f"h_{i}.h5" for i in range(4)]
    for name in names:
        dcu.put_file(name, b"h" * 100)
    assert sorted(set(ids(collect_events(opened, names, 30)))) == names
    assert opened.stats["head_errors"] > 0 and opened.stats["listing_errors"] == 0


def test_only_listed_paths_under_the_configured_prefixes_are_reported(dcu: Dcu) -> None:
    source = source_of(dcu, prefixes=["current/raw/"])
    source.open(zmq.Context.instance())
    try:
        for name in ("current/raw/s_1_master.h5", "current/processed/x.h5", "top.h5"):
            dcu.put_file(name, b"p")
        events = collect_events(source, ["current/raw/s_1_master.h5"], 30) + drain(source, 5)
        assert set(ids(events)) == {"current/raw/s_1_master.h5"}
    finally:
        source.close()
