"""Which pipeline (``sender.streams``) a file takes: the rules that keep one file's copies, and one series, in order."""
from __future__ import annotations

from types import SimpleNamespace

import zmq

from hidra_core import FileEvent, FileStat
from hidra_core.config import StorageTarget, load_config
from hidra_core.host.build import build_sender
from hidra_core.sender.lane import Members, member_for, series_lane
from hidra_core.sender.outgoing import Checksums, Outgoing
from hidra_core.sender.sending import Sending
from hidra_core.sender.storage_link import StorageLink
from hidra_core.types import FRAME, SERIES_END


def _sender(jobs: list[int], files: list[dict[str, int]]) -> Sending:
    sending = object.__new__(Sending)
    sending.lanes = [SimpleNamespace(index=i, fetching=SimpleNamespace(jobs=dict.fromkeys(range(n)), files=f))
                     for i, (n, f) in enumerate(zip(jobs, files))]
    sending.link = StorageLink(StorageTarget())
    sending._limits = [32] * len(jobs)
    return sending


def test_a_new_file_takes_the_least_busy_pipeline() -> None:
    sending = _sender([5, 1, 3], [{}, {}, {}])
    assert sending._lane_for(FileEvent("/s", "", "new.dat"), [[], [], []]) == 1
    other = (FileEvent("/s", "", "other.dat"), False, None)
    assert sending._lane_for(FileEvent("/s", "", "new.dat"), [[], [other] * 9, []]) == 2  # asked this turn


def test_a_file_sent_again_takes_the_pipeline_of_its_earlier_copy() -> None:
    """That copy may still sit in its socket's queue: through another socket the two would interleave."""
    sending = _sender([5, 0], [{}, {}])
    out = Outgoing(FileEvent("/s", "", "again.dat"), FileStat(10, 1, 1), 10, {})
    out.pending.append(Checksums(1).add(b"x" * 10))
    out.next_message()
    sending.link.sent(out, 0, lane=0)
    assert sending._lane_for(FileEvent("/s", "", "again.dat"), [[], []]) == 0  # busier, but its earlier one
    assert sending.link.on_message([b"", b"again.dat", b"0", b"xxh3_64", out.checksum.encode()])
    sending.link.lanes.clear()
    assert sending._lane_for(FileEvent("/s", "", "again.dat"), [[], []]) == 1


def test_a_file_with_a_job_in_a_pipeline_stays_there() -> None:
    sending = _sender([1, 9], [{}, {"busy.dat": 1}])
    assert sending._lane_for(FileEvent("/s", "", "busy.dat"), [[], []]) == 1


def test_every_event_of_a_series_takes_one_pipeline() -> None:
    sending = _sender([0, 0, 0, 0], [{}, {}, {}, {}])
    lanes = {sending._lane_for(FileEvent("/s", "", f"{i}.frame", series="run7"), [[]] * 4) for i in range(50)}
    assert lanes == {series_lane("run7", 4)}


def test_a_full_pipeline_defers_its_files() -> None:
    sending = _sender([0, 32], [{}, {"full.dat": 1}])
    assert sending._lane_for(FileEvent("/s", "", "full.dat"), [[], []]) is None


def test_each_pipeline_gets_a_fetcher_of_its_own(tmp_path) -> None:
    """Fetchers keep state between calls (a buffer pool, a spooled download): one per worker thread."""
    config = load_config(None, [f"sender.source.inotify.path={tmp_path}", "sender.streams=3"])
    context = zmq.Context()
    try:
        built = build_sender(config, "<test>", context)
        assert len({id(fetcher) for fetcher in built.fetchers}) == 3
        assert built.fetcher is built.fetchers[0]
    finally:
        context.term()


def test_a_series_stays_with_its_member_until_its_end_even_when_the_first_choice_returns() -> None:
    """A member back from a restart must not get the rest of a series another member now writes."""
    names = [f"tcp://h{i}:1" for i in range(3)]
    members = Members(names)
    frame = FileEvent("/s", "", "1.frame", kind=FRAME, series="run7")
    home = members(frame, [0, 1, 2])
    others = [m for m in range(3) if m != home]
    moved = members(frame, others)  # its member went away mid-series
    assert moved != home
    assert members(frame, [0, 1, 2]) == moved  # ... and came back: the series stays where it is now
    assert members(FileEvent("/s", "", "end", kind=SERIES_END, series="run7"), [0, 1, 2]) == moved
    assert members(frame, [0, 1, 2]) == home  # a new series of that name starts afresh
    assert members(FileEvent("/s", "", "f.dat"), [0, 1, 2]) == member_for("f.dat", names, [0, 1, 2])
