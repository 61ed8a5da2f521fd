"""``hidra_core.client.stream()``: register on entry, whole files out, STOP and closed sockets on every exit."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Generator, Iterator

import pytest
import zmq

import hidra_core.client
from hidra_core.client import ChecksumError, VersionError
from hidra_core.client._wire import fqdn
from hidra_core.testing import TrackingContext

# NOTE: tests/ on sys.path makes the `legacy` test package (emulator, fake sender) importable from here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from legacy.fakesender import FakeSender, make_messages, metadata_message  # noqa: E402

FILES = {f"f{i}.cbf": os.urandom(1500 + i) for i in range(3)}


@pytest.fixture
def sender(zmq_context: zmq.Context) -> Iterator[FakeSender]:
    with FakeSender(zmq_context) as fake:
        yield fake


@pytest.fixture
def client_context() -> Iterator[TrackingContext]:
    """The client's own context, so that a test can show the generator closed all of its sockets."""
    ctx = TrackingContext()
    yield ctx
    assert ctx.open_sockets() == [], "the generator left sockets open"
    ctx.term()


def _stream(sender: FakeSender, context: zmq.Context,
            **kwargs: Any) -> Generator[tuple[dict[str, Any], Any], None, None]:
    return hidra_core.client.stream("127.0.0.1", com_port=sender.com_port, request_port=sender.request_port,
                                    data_host="127.0.0.1", context=context, **kwargs)


def test_stream_yields_whole_files_and_stops_on_break(sender: FakeSender, client_context: TrackingContext) -> None:
    sender.on_start = [m for name, data in FILES.items() for m in make_messages(name, data, 1000)]
    it = _stream(sender, client_context, pattern=r".*\.cbf$", appid="ana1")
    assert sender.signals == [], "nothing is registered before the iteration starts"
    got = {}
    for meta, data in it:
        got[meta["filename"]] = data
        if len(got) == len(FILES):
            break
    assert got == FILES
    it.close()  # what a for loop's end does to a generator once it is no longer referenced
    assert sender.signal_names() == ["START_STREAM", "GET_VERSION", "STOP_STREAM"]
    start, stop = sender.signals[0], sender.signals[2]
    assert start[:2] == [b"4.4.3", b"ana1"] and stop[:2] == [b"4.4.3", b"ana1"]
    sid = json.loads(start[3])[0][0]
    host, _, port = sid.rpartition(":")
    assert host == fqdn("127.0.0.1") and int(port) > 0, "bound first, then registered with the real port"
    assert json.loads(start[3]) == json.loads(stop[3]) == [[sid, 1, r".*\.cbf$"]]


def test_timeout_ends_the_iteration_and_query_mode_asks_per_file(sender: FakeSender,
                                                                 client_context: TrackingContext) -> None:
    sender.on_start = make_messages("a", b"x" * 2500, 1000)
    started = time.monotonic()
    items = list(_stream(sender, client_context, mode="query", timeout=0.2))
    assert [(m["filename"], d) for m, d in items] == [("a", b"x" * 2500)]
    assert 0.15 < time.monotonic() - started < 2.0
    assert sender.signal_names() == ["START_QUERY_NEXT", "GET_VERSION", "STOP_QUERY_NEXT"]
    sid = json.loads(sender.signals[0][3])[0][0].encode()
    assert sender.collect_requests(3, quiet_ms=50) == [[b"NEXT", sid], [b"NEXT", sid], [b"CANCEL", sid]]


@pytest.mark.parametrize("mode", ["stream_metadata", "query_metadata"])
def test_metadata_modes_yield_none_as_data(mode: str, sender: FakeSender, client_context: TrackingContext) -> None:
    sender.on_start = [metadata_message("a.h5", "raw", 10**9)]
    items = list(_stream(sender, client_context, mode=mode, timeout=0.1))
    assert [(m["filename"], m["filesize"], d) for m, d in items] == [("a.h5", 10**9, None)]
    expected = "STOP_QUERY_NEXT" if mode.startswith("query") else "STOP_STREAM"
    assert sender.signal_names()[-1] == expected


def test_exceptions_in_the_loop_still_stop(sender: FakeSender, client_context: TrackingContext) -> None:
    sender.on_start = make_messages("a", b"abc", 10)
    with pytest.raises(RuntimeError, match="consumer failed"):
        for _meta, _data in _stream(sender, client_context):
            raise RuntimeError("consumer failed")
    assert sender.signal_names()[-1] == "STOP_STREAM"


def test_corrupt_file_raises_from_the_generator_and_stops(sender: FakeSender,
                                                          client_context: TrackingContext) -> None:
    bad = make_messages("bad", b"abc" * 10, 10)
    bad[1] = [bad[1][0], b"0123456789"]
    sender.on_start = [*bad, *make_messages("good", b"ok", 10)]
    with pytest.raises(ChecksumError, match="bad"):
        list(_stream(sender, client_context, timeout=5))
    assert sender.signal_names()[-1] == "STOP_STREAM"
    sender.signals.clear()
    files = list(_stream(sender, client_context, timeout=0.2, drop_corrupt=True))
    assert [m["filename"] for m, _ in files] == ["good"]


def test_refused_registration_raises_on_first_next(sender: FakeSender, client_context: TrackingContext) -> None:
    sender.responder = lambda frames: [b"VERSION_CONFLICT", b"5.0.0"]
    it = _stream(sender, client_context)
    with pytest.raises(VersionError):
        next(it)
    assert sender.signal_names() == ["START_STREAM"], "nothing registered, nothing to stop"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mode": "push"}, "mode"), ({"pattern": "("}, "does not compile"), ({"prio": -1}, "prio"),
    ({"timeout": -1}, "timeout"),
])
def test_arguments_are_checked_before_iteration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hidra_core.client.stream("127.0.0.1", **kwargs)


@pytest.mark.parametrize("form", ["{host}:{port}", "tcp://{host}:{port}"])
def test_stream_takes_the_com_port_with_the_host(sender: FakeSender, client_context: TrackingContext,
                                                 form: str) -> None:
    sender.on_start = make_messages("one.cbf", b"x" * 10, 1000)
    host = form.format(host="127.0.0.1", port=sender.com_port)
    it = hidra_core.client.stream(host, data_host="127.0.0.1", context=client_context, timeout=30)
    meta, data = next(it)
    it.close()
    assert meta["filename"] == "one.cbf" and data == b"x" * 10


@pytest.mark.parametrize(("host", "com_port", "why"), [
    ("detpc01:abc", None, "is not NAME, NAME:PORT or tcp://NAME:PORT"),
    ("detpc01:50000", 50010, "names com port 50000, com_port says 50010"),
])
def test_stream_refuses_an_unclear_com_port(host: str, com_port: int | None, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        hidra_core.client.stream(host, com_port=com_port)
