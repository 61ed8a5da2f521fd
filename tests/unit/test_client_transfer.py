"""``hidra_core.client.Transfer`` against a scripted fake sender on 127.0.0.1 (hidra4-protocol.md §3–§6)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq

from hidra_core.client import (
    AuthenticationFailed,
    ChecksumError,
    CommunicationFailed,
    HidraClientError,
    Transfer,
    VersionError,
)
from hidra_core.client._wire import fqdn
from hidra_core.testing import TrackingContext

# NOTE: tests/ on sys.path makes the `legacy` test package (emulator, fake sender) importable from here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from legacy.fakesender import FakeSender, default_reply, make_messages, metadata_message  # noqa: E402

DATA = os.urandom(2500)
ALL_TYPES = ["STREAM", "STREAM_METADATA", "QUERY_NEXT", "QUERY_NEXT_METADATA"]


@pytest.fixture
def sender(zmq_context: zmq.Context) -> Iterator[FakeSender]:
    with FakeSender(zmq_context) as fake:
        yield fake


@pytest.fixture
def transfer(zmq_context: zmq.Context, sender: FakeSender) -> Iterator[Callable[..., Transfer]]:
    made: list[Transfer] = []

    def make(connection_type: str, **kwargs: Any) -> Transfer:
        kwargs.setdefault("signal_timeout", 2.0)
        t = Transfer(connection_type, "127.0.0.1", context=zmq_context, com_port=sender.com_port,
                     request_port=sender.request_port, **kwargs)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def _targets(frames: list[bytes]) -> Any:
    return json.loads(frames[3])


@pytest.mark.parametrize("connection_type", ALL_TYPES)
def test_initiate_start_get_stop(connection_type: str, sender: FakeSender) -> None:
    own = TrackingContext()  # the Transfer's sockets only, to show that stop() closes them all
    t = Transfer(connection_type, "127.0.0.1", context=own, com_port=sender.com_port,
                 request_port=sender.request_port)
    sid = t.start(["127.0.0.1", 0])
    assert sid == f"{fqdn('127.0.0.1')}:{t.data_port}"
    t.initiate(["127.0.0.1", t.data_port, 1, r".*\.cbf$"])
    assert t.remote_version == "4.4.3"
    start, version = sender.wait_signals(2)
    assert start == [b"4.4.3", str(os.getpid()).encode(), f"START_{connection_type}".encode(),
                     json.dumps([[sid, 1, r".*\.cbf$"]]).encode()]
    assert version[1:] == [str(os.getpid()).encode(), b"GET_VERSION", b"[]"]
    assert sender.peers[0] != sender.peers[1], "GET_VERSION must go out on a fresh REQ socket"

    push = sender.data_to(sid)
    metadata_mode = connection_type.endswith("_METADATA")
    for message in [metadata_message("a.cbf", "raw")] if metadata_mode else make_messages("a.cbf", DATA, 1000):
        push.send_multipart(message)
    metadata, data = t.get(5000)
    assert metadata["filename"] == "a.cbf"
    assert data == (None if metadata_mode else DATA)
    if connection_type.startswith("QUERY"):
        assert sender.collect_requests(1, quiet_ms=50) == [[b"NEXT", sid.encode()]]

    t.stop()
    stop = sender.wait_signals(3)[2]
    expected = "STOP_QUERY_NEXT" if connection_type.startswith("QUERY") else "STOP_STREAM"
    assert stop[2].decode() == expected and _targets(stop) == [[sid, 1, r".*\.cbf$"]]
    assert own.open_sockets() == [], "stop() closes every socket of the Transfer"
    assert not own.closed, "a context passed in is not terminated"
    own.term()
    t.stop()  # idempotent
    assert len(sender.signals) == 3


def test_query_sends_one_next_per_file_and_cancel_on_timeout(sender: FakeSender,
                                                             transfer: Callable[..., Transfer]) -> None:
    t = transfer("QUERY_NEXT")
    sid = t.start(["127.0.0.1", 0]).encode()
    t.initiate(["127.0.0.1", t.data_port, 1])
    push = sender.data_to(sid.decode())
    for message in make_messages("big", DATA, 500):  # 5 chunks
        push.send_multipart(message)
    assert t.get(5000)[1] == DATA
    started = time.monotonic()
    assert t.get(100) == [None, None]
    assert 0.09 < time.monotonic() - started < 1.0
    assert sender.collect_requests(3, quiet_ms=100) == [[b"NEXT", sid], [b"NEXT", sid], [b"CANCEL", sid]]


def test_start_without_port_uses_the_registered_target(sender: FakeSender, transfer: Callable[..., Transfer],
                                                       zmq_context: zmq.Context) -> None:
    probe = zmq_context.socket(zmq.PULL)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)  # NOTE: a free port for a 4.x-style initiate-then-start; reuse races are negligible
    t = transfer("STREAM")
    t.initiate([["127.0.0.1", port, 0], ["otherhost.invalid", 5, 0]])
    assert t.start() == f"{fqdn('127.0.0.1')}:{port}"
    sender.data_to(t.socket_id).send_multipart(make_messages("x", b"abc", 10)[0])
    assert t.get(5000)[1] == b"abc"


@pytest.mark.parametrize(("reply", "error"), [
    ([b"VERSION_CONFLICT", b"5.0.0"], VersionError),
    ([b"NO_VALID_HOST"], AuthenticationFailed),
    ([b"NO_VALID_SIGNAL"], CommunicationFailed),
    ([b"STORING_DISABLED", b"4.4.3"], CommunicationFailed),
])
def test_refusals_raise_and_register_nothing(reply: list[bytes], error: type[Exception], sender: FakeSender,
                                             transfer: Callable[..., Transfer]) -> None:
    sender.responder = lambda frames: reply
    t = transfer("STREAM_METADATA")
    with pytest.raises(error):
        t.initiate(["127.0.0.1", 50100, 1])
    t.stop()
    assert sender.signal_names() == ["START_STREAM_METADATA"], "nothing registered, so nothing to stop"


def test_no_reply_raises_within_the_timeout_and_renews_the_socket(sender: FakeSender,
                                                                  transfer: Callable[..., Transfer]) -> None:
    answered: list[bool] = []

    def first_unanswered(frames: list[bytes]) -> list[bytes] | None:
        answered.append(bool(answered))
        return default_reply(frames) if answered[-1] else None

    sender.responder = first_unanswered
    t = transfer("STREAM", signal_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(CommunicationFailed, match="no reply .* within 0.3 s"):
        t.initiate(["127.0.0.1", 50100, 1])
    assert 0.25 < time.monotonic() - started < 1.5
    assert t.get_remote_version() == "4.4.3"  # a REQ socket left waiting for its reply could not send this
    assert sender.peers[0] != sender.peers[1]


def test_force_stop(sender: FakeSender, transfer: Callable[..., Transfer]) -> None:
    t = transfer("QUERY_NEXT_METADATA")
    assert t.force_stop(["127.0.0.1", 50100, 1]) is True
    frames = sender.signals[0]
    assert frames[2] == b"FORCE_STOP_QUERY_NEXT_METADATA"
    assert _targets(frames) == [[f"{fqdn('127.0.0.1')}:50100", 1, ".*"]]
    sender.responder = lambda frames: [b"NO_OPEN_CONNECTION_FOUND"]
    assert t.force_stop(["127.0.0.1", 50100, 1]) is False
    sender.responder = lambda frames: [b"NO_VALID_HOST"]
    with pytest.raises(AuthenticationFailed):
        t.force_stop(["127.0.0.1", 50100, 1])


def test_appid_and_remote_version(sender: FakeSender, transfer: Callable[..., Transfer]) -> None:
    t = transfer("STREAM")
    t.set_appid(4711)
    assert t.get_remote_version() == "4.4.3"
    assert sender.signals[0][:3] == [b"4.4.3", b"4711", b"GET_VERSION"]


def test_alive_test_interleaving_and_checksum_errors_on_the_socket(sender: FakeSender,
                                                                   transfer: Callable[..., Transfer]) -> None:
    t = transfer("STREAM")
    push = sender.data_to(t.start(["127.0.0.1", 0]))
    a, b = make_messages("a", DATA, 1000), make_messages("b", DATA[::-1], 1000, relative_path="x")
    bad = make_messages("bad", DATA, 1000)
    bad[1] = [bad[1][0], bytes(1000)]
    for message in [a[0], [b"ALIVE_TEST"], b[0], b[1], a[1], a[2], b[2], *bad, make_messages("c", b"c", 9)[0]]:
        push.send_multipart(message)
    assert t.get(5000)[0]["filename"] == "a"
    metadata, data = t.get(5000)
    assert (metadata["relative_path"], data) == ("x", DATA[::-1])
    with pytest.raises(ChecksumError, match="bad"):
        t.get(5000)
    assert t.get(5000)[1] == b"c"


def test_whitelist_on_the_data_socket(sender: FakeSender, transfer: Callable[..., Transfer],
                                     zmq_context: zmq.Context) -> None:
    # NOTE: a whitelist needs a ZAP handler, one per context: each Transfer gets its own context here.
    with Transfer("STREAM") as allowed:
        sender.data_to(allowed.start(["127.0.0.1", 0], whitelist=["localhost"])).send_multipart(
            make_messages("ok", b"ok", 10)[0])
        assert allowed.get(5000)[1] == b"ok"
    with Transfer("STREAM") as refused:
        sender.data_to(refused.start(["127.0.0.1", 0], whitelist=["192.0.2.1"])).send_multipart(
            make_messages("no", b"no", 10)[0])
        assert refused.get(300) == [None, None]
    for bad in ([], ["host.invalid"]):
        with pytest.raises(ValueError, match="allows nobody"):
            transfer("STREAM").start(["127.0.0.1", 0], whitelist=bad)
    blocker = zmq_context.socket(zmq.REP)
    blocker.bind("inproc://zeromq.zap.01")  # as if another ZAP handler ran in the shared context
    try:
        with pytest.raises(HidraClientError, match="already runs a ZAP handler"):
            transfer("STREAM").start(["127.0.0.1", 0], whitelist=["localhost"])
    finally:
        blocker.close(linger=0)


def test_detector_id_asks_the_control_server(zmq_context: zmq.Context, sender: FakeSender) -> None:
    def control(frames: list[bytes]) -> list[bytes]:
        if frames == [b"IS_ALIVE"]:
            return [b"OK"]
        if frames[0] == b"get" and frames[2] == b"det01":
            return [str({b"com_port": sender.com_port, b"request_port": sender.request_port}[frames[3]]).encode()]
        return [b"ERROR"]

    with FakeSender(zmq_context, control) as control_server:
        t = Transfer("STREAM_METADATA", "127.0.0.1", context=zmq_context, detector_id="det01",
                     control_server_port=control_server.com_port)
        try:
            assert (t.com_port, t.request_port) == (sender.com_port, sender.request_port)
            assert control_server.signals[1] == [b"get", fqdn().encode(), b"det01", b"com_port"]
            assert t.get_remote_version() == "4.4.3"
        finally:
            t.close()
        with pytest.raises(CommunicationFailed, match="no com_port"):
            Transfer("STREAM", "127.0.0.1", context=zmq_context, detector_id="nope",
                     control_server_port=control_server.com_port)


def test_own_context_is_terminated_and_context_manager_stops(sender: FakeSender) -> None:
    with Transfer("STREAM", "127.0.0.1", com_port=sender.com_port) as t:
        t.start(["127.0.0.1", 0])
        t.initiate(["127.0.0.1", t.data_port, 1])
    assert t.context.closed
    assert sender.wait_signals(3)[2][2] == b"STOP_STREAM"
    with pytest.raises(HidraClientError, match="closed"):
        t.start(0)


def test_misuse_is_reported(transfer: Callable[..., Transfer]) -> None:
    with pytest.raises(ValueError, match="connection_type"):
        Transfer("STREAMING")
    t = transfer("STREAM")
    with pytest.raises(HidraClientError, match="start"):
        t.get(10)
    with pytest.raises(ValueError, match="needs a port"):
        t.start()
    with Transfer("STREAM") as receiver_only, pytest.raises(ValueError, match="signal_host"):
        receiver_only.get_remote_version()
    t.start(["127.0.0.1", 0])
    with pytest.raises(HidraClientError, match="already started"):
        t.start(["127.0.0.1", 0])


def test_get_and_store_take_seconds_as_timeout_s_and_keep_4x_milliseconds_as_timeout(
        sender: FakeSender, transfer: Callable[..., Transfer], tmp_path: Path) -> None:
    t = transfer("STREAM")
    sid = t.start(["127.0.0.1", 0])
    t.initiate(["127.0.0.1", t.data_port, 1])
    push = sender.data_to(sid)
    for message in make_messages("a.cbf", DATA, 1000):
        push.send_multipart(message)
    assert t.get(timeout_s=30)[1] == DATA
    assert t.get(timeout_s=0.05) == [None, None]
    assert t.get(timeout=50) == [None, None]  # 4.x: milliseconds
    for message in make_messages("b.cbf", DATA, 1000):
        push.send_multipart(message)
    assert t.store(str(tmp_path), timeout_s=30) == str(tmp_path / "b.cbf")
    with pytest.raises(TypeError, match="not both"):
        t.get(5000, timeout_s=5)
    with pytest.raises(ValueError, match=">= 0"):
        t.get(timeout_s=-1)
