"""The ``eiger_stream`` source over a real PUSH/PULL pair fed with golden messages: hostile input is counted and
reported, and the stream goes on."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import pytest
import zmq

from conftest import golden_series
from hidra_core import FRAME, SERIES_END, SERIES_START, FileEvent
from hidra_core.testing import collect_events
from hidra_eiger.sim import stream_v1, stream_v2
from hidra_eiger.source import EigerStreamConfig, EigerStreamSource

Feed = Callable[..., tuple[zmq.Socket, EigerStreamSource]]


@pytest.fixture
def dcu(zmq_context: zmq.Context) -> Iterator[Feed]:
    """``dcu(**options)``: a PUSH socket playing the DCU and an opened source connected to it."""
    made: list[tuple[zmq.Socket, EigerStreamSource]] = []

    def make(**options: Any) -> tuple[zmq.Socket, EigerStreamSource]:
        push = zmq_context.socket(zmq.PUSH)
        push.linger = 0
        port = push.bind_to_random_port("tcp://127.0.0.1")
        source = EigerStreamSource(EigerStreamConfig(endpoint=f"tcp://127.0.0.1:{port}", **options))
        source.open(zmq_context)
        made.append((push, source))
        return push, source

    yield make
    for push, source in made:
        source.close()
        push.close()


def _send(push: zmq.Socket, messages: list[list[bytes]]) -> None:
    for parts in messages:
        push.send_multipart(parts)


def _until_end(source: EigerStreamSource, name: str = "series_1") -> list[FileEvent]:
    return collect_events(source, [f"{name}.end"], timeout_s=20)


def _v1(n: int = 4, **kw: Any) -> tuple[Any, list[list[bytes]]]:
    series = golden_series(**kw)
    return series, [stream_v1.image_parts(series, i) for i in range(n)]


def _frames(events: list[FileEvent]) -> list[int]:
    return [e.metadata["image_id"] for e in events if e.kind == FRAME]


def _summary(events: list[FileEvent]) -> tuple[list[str], dict[str, Any]]:
    end = events[-1]
    assert end.kind == SERIES_END
    return [e.kind for e in events], dict(end.metadata)


def test_frames_before_any_header_are_dropped_counted_and_the_next_series_goes_through(
        dcu: Feed, caplog: pytest.LogCaptureFixture) -> None:
    push, source = dcu()
    early, early_images = _v1(3, series_id=1)
    series, images = _v1(2, series_id=2)
    _send(push, [*early_images, stream_v1.end_parts(early), stream_v1.header_parts(series), *images,
                 stream_v1.end_parts(series)])
    kinds, end = _summary(_until_end(source, "series_2"))
    assert kinds == [SERIES_START, FRAME, FRAME, SERIES_END] and end["frames"] == 2
    assert source.stats["late"] == 4 and source.stats["frames"] == 2  # 3 images and the end of series 1
    late = [r for r in caplog.records if "before any header" in r.getMessage()]
    assert len(late) == 1 and "series 1" in late[0].getMessage()  # logged once, naming the series


def _bad_encoding(parts: list[bytes]) -> list[bytes]:
    return [parts[0], parts[1].replace(b"bs16-lz4<", b"zstd<"), *parts[2:]]


@pytest.mark.parametrize(("name", "bad", "stat", "emitted"), [
    ("unknown encoding", lambda images: _bad_encoding(images[2]), "unknown_encoding", [0, 1, 3]),
    ("truncated multipart", lambda images: images[2][:2], "malformed", [0, 1, 3]),
    ("malformed JSON", lambda images: [b'{"htype": "dimage-1.0", "series"', *images[2][1:]], "malformed",
     [0, 1, 2, 3]),
    ("CBOR list", lambda images: [cbor2.dumps([1, 2, 3])], "malformed", [0, 1, 2, 3]),
    ("CBOR map without type", lambda images: [cbor2.dumps({"series_id": 1})], "malformed", [0, 1, 2, 3]),
    ("CBOR of unknown type", lambda images: [cbor2.dumps({"type": "pulse", "series_id": 1})], "malformed",
     [0, 1, 2, 3]),
    ("unknown htype", lambda images: [b'{"htype": "dstatus-1.0"}'], "unknown_htype", [0, 1, 2, 3]),
])
def test_bad_message_in_a_series_is_counted_and_the_stream_continues(dcu: Feed, name: str, bad: Any, stat: str,
                                                                     emitted: list[int]) -> None:
    push, source = dcu()
    series, images = _v1(4)
    broken = bad(images)
    good = [m for i, m in enumerate(images) if i in emitted]
    _send(push, [stream_v1.header_parts(series), *good[:2], broken, *good[2:], stream_v1.end_parts(series)])
    events = _until_end(source)
    kinds, end = _summary(events)
    assert _frames(events) == emitted and kinds == [SERIES_START, *[FRAME] * len(emitted), SERIES_END]
    assert (end["frames"], end["missing"], end["aborted"]) == (len(emitted), 0, False)  # a rejected image is no gap
    assert source.stats[stat] == 1


def test_bad_cbor_in_a_v2_series_is_counted_and_the_stream_continues(dcu: Feed) -> None:
    push, source = dcu()
    series = golden_series("cbor", channels=2)
    _send(push, [[stream_v2.start_message(series)], [stream_v2.image_message(series, 0)], [cbor2.dumps([0])],
                 [cbor2.dumps({"type": "image", "series_id": 1})], [stream_v2.image_message(series, 1)],
                 [stream_v2.end_message(series)]])
    events = _until_end(source)
    assert [e.filename for e in events] == [
        "series_1.start", "series_1_000000_threshold_1", "series_1_000000_threshold_2",
        "series_1_000001_threshold_1", "series_1_000001_threshold_2", "series_1.end"]
    assert source.stats["malformed"] == 2 and events[-1].metadata["frames"] == 4


def test_frame_of_another_series_is_dropped_as_late(dcu: Feed, caplog: pytest.LogCaptureFixture) -> None:
    push, source = dcu()
    series, images = _v1(2)
    _other, others = _v1(1, series_id=9)
    _send(push, [stream_v1.header_parts(series), images[0], others[0], images[1], stream_v1.end_parts(series)])
    events = _until_end(source)
    assert _frames(events) == [0, 1] and source.stats["late"] == 1
    assert any("series 9 arrived in another series" in r.getMessage() for r in caplog.records)


def test_gaps_in_frame_numbers_are_counted_as_missing_with_a_loud_warning(
        dcu: Feed, caplog: pytest.LogCaptureFixture) -> None:
    push, source = dcu()
    series, images = _v1(8)
    # NOTE: a second client on the DCU's PUSH socket would get every other message, like these
    _send(push, [stream_v1.header_parts(series), images[0], images[2], images[4], images[7],
                 stream_v1.end_parts(series)])
    events = _until_end(source)
    _kinds, end = _summary(events)
    assert _frames(events) == [0, 2, 4, 7] and (end["frames"], end["missing"]) == (4, 4)
    assert source.stats["missing"] == 4
    loud = [r for r in caplog.records if "missing before image" in r.getMessage()]
    assert len(loud) == 1 and loud[0].levelno == logging.ERROR and "another client" in loud[0].getMessage()


def test_new_header_while_a_series_is_open_ends_the_old_one_as_aborted_first(dcu: Feed) -> None:
    push, source = dcu()
    first, images = _v1(2, series_id=1)
    second, more = _v1(1, series_id=2)
    _send(push, [stream_v1.header_parts(first), *images, stream_v1.header_parts(second), *more,
                 stream_v1.end_parts(second)])
    events = _until_end(source, "series_2")
    assert [e.filename for e in events] == ["series_1.start", "series_1_000000", "series_1_000001", "series_1.end",
                                            "series_2.start", "series_2_000000", "series_2.end"]
    aborted = events[3].metadata
    assert (aborted["aborted"], aborted["frames"]) == (True, 2) and "series 2" in aborted["reason"]
    assert events[-1].metadata["aborted"] is False


def test_v1_series_with_a_repeated_id_get_other_versions(dcu: Feed) -> None:
    # NOTE: a restarted DCU numbers its series from 1 again; V1 sends no unique id
    push, source = dcu()
    series, images = _v1(1)
    _send(push, [stream_v1.header_parts(series), *images, stream_v1.end_parts(series)])
    first = _until_end(source)
    _send(push, [stream_v1.header_parts(series), *images, stream_v1.end_parts(series)])
    second = _until_end(source)
    assert [e.filename for e in first] == [e.filename for e in second]
    assert not {e.version for e in first} & {e.version for e in second}


def test_hash_mismatch_drops_the_frame_when_verify_hash_is_on(dcu: Feed,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    push, source = dcu(verify_hash=True)
    series, images = _v1(3)
    images[1][0] = images[1][0].replace(b'"hash": "', b'"hash": "0')[:-2] + b'"}'  # still 32 hex digits
    _send(push, [stream_v1.header_parts(series), *images, stream_v1.end_parts(series)])
    events = _until_end(source)
    assert _frames(events) == [0, 2] and source.stats["hash_mismatch"] == 1 and events[-1].metadata["missing"] == 0
    assert any("image 1: MD5" in r.getMessage() and "series_1" in r.getMessage() for r in caplog.records)
    assert all(len(e.metadata["md5"]) == 32 for e in events if e.kind == FRAME)


def test_same_problem_is_logged_once_per_series_and_then_summed_up(dcu: Feed,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    push, source = dcu()
    series, images = _v1(5)
    _send(push, [stream_v1.header_parts(series), *(_bad_encoding(p) for p in images), stream_v1.end_parts(series)])
    _until_end(source)
    said = [r.getMessage() for r in caplog.records if "encoding" in r.getMessage()]
    assert len(said) == 2 and "5 unknown_encoding problems in all" in said[1]
    assert source.stats["unknown_encoding"] == 5


def test_series_open_at_close_is_ended_as_aborted_with_a_warning(dcu: Feed, zmq_context: zmq.Context,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    push, source = dcu()
    series, images = _v1(2)
    _send(push, [stream_v1.header_parts(series), *images])
    collect_events(source, ["series_1_000001"], timeout_s=20)
    source.close()
    assert any("series_1 ended without its end message" in r.getMessage() for r in caplog.records)
    source.open(zmq_context)  # NOTE: the same instance, opened again, reports the end first
    (end,) = source.poll(0)
    assert (end.kind, end.filename, end.metadata["aborted"], end.metadata["reason"]) == (
        SERIES_END, "series_1.end", True, "the source closed")
