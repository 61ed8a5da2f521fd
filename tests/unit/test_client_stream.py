"""``hidra_core.client.stream()``: register on entry, whole files out, STOP and closed sockets on every exit."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

import hidra_core.client
from hidra_core.client import VersionError
from hidra_core.client._wire import fqdn
from hidra_core.testing import TrackingContext

# NOTE: tests/ on sys.path makes the `legacy` test package (emulator, fake sender) importable from here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from legacy.fakesender import FakeSender, make_messages, metadata_message  # noqa: E402


@pytest.fixture
def sender(zmq_context: zmq.Context) -> Iterator[FakeSender]:
    with FakeSender(zmq_context) as fake:
        yield fake


@pytest.fixture
def client_context() -> Iterator[TrackingContext]:
    """The client's own context, so that a test can show the generator closed all of its sockets."""
    ctx = TrackingContext()
    yield ctx
    assert ctx.open_sockets() == []
    ctx.term()


def _registered_id(sender: FakeSender) -> str:
    start = sender.wait_signals(1)[0]
    return json.loads(start[3])[0][0]


def test_stream_yields_whole_files_and_stops_on_close(sender: FakeSender, client_context: TrackingContext) -> None:
    files = {f"f{i}.cbf": os.urandom(1500 + i) for i in range(3)}
    it = hidra_core.client.stream("127.0.0.1", com_port=sender.com_port, pattern=r".*\.cbf$",
                                  data_host="127.0.0.1", appid="ana1", context=client_context)
    assert sender.signals == [], "nothing is registered before the first next()"
    push = None
    got = {}
    for meta, data in _feed_after_start(it, sender, files):
        got[meta["filename"]] = data
        if len(got) == len(files):
            break  # leaving the loop closes the generator
    assert got == files
    names = sender.signal_names()
    assert names == ["START_STREAM", "GET_VERSION", "STOP_STREAM"]
    start, stop = sender.signals[0], sender.signals[2]
    assert start[:2] == [b"4.4.3", b"ana1"] and stop[1] == b"ana1"
    sid = json.loads(start[3])[0][0]
    host, _, port = sid.rpartition(":")
    assert host == fqdn("127.0.0.1") and int(port) > 0, "bound first, then registered with the real port"
    assert json.loads(start[3]) == json.loads(stop[3]) == [[sid, 1, r".*\.cbf$"]]
    del push


def _feed_after_start(it: Iterator, sender: FakeSender, files: dict[str, bytes]) -> Iterator:
    """Send the files once the generator registered (its START carries the data port), then pass items on."""
    first = True
    while True:
        if first:
            # NOTE: the generator registers inside its first next(); the fake sender answers from its own thread,
            # so we can only push after that next() started. Prime it with a file pushed on START.
            sender.responder = _push_on_start(sender, files)
            first = False
        try:
            yield next(it)
        except StopIteration:
            return
        finally:
            pass


def _push_on_start(sender: FakeSender, files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    from legacy.fakesender import default_reply

    def respond(frames: list[bytes]) -> list[bytes]:
        if frames[2].startswith(b"START_"):
            sid = json.loads(frames[3])[0][0]
            sender.pending_push = (sid, files)  # type: ignore[attr-defined]
        return default_reply(frames)

    return respond
