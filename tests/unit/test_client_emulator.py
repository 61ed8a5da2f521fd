"""The 4.x client emulator (tests/legacy/emulator.py) must itself be right, quirks included (§3–§7, §10)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq

# NOTE: tests/ on sys.path makes the `legacy` test package (emulator, fake sender) importable from here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from legacy.emulator import (  # noqa: E402
    AuthenticationFailed,
    CommunicationFailed,
    DataSavingError,
    FormatError,
    LegacyClient,
    VersionError,
    raw_request,
    suffixes_to_regex,
)
from legacy.fakesender import FakeSender, default_reply, make_messages, metadata_message  # noqa: E402

DATA = os.urandom(2500)


@pytest.fixture
def sender(zmq_context: zmq.Context) -> Iterator[FakeSender]:
    with FakeSender(zmq_context) as fake:
        yield fake


@pytest.fixture
def legacy(zmq_context: zmq.Context, sender: FakeSender) -> Iterator[Callable[..., LegacyClient]]:
    made: list[LegacyClient] = []

    def make(connection_type: str, **kwargs: Any) -> LegacyClient:
        client = LegacyClient(connection_type, "127.0.0.1", com_port=sender.com_port,
                              request_port=sender.request_port, context=zmq_context, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _tamper(message: list[bytes], **changes: Any) -> list[bytes]:
    meta = json.loads(message[0])
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None or k not in changes}
    return [json.dumps(meta).encode(), message[1]]


def _started(legacy: Callable[..., LegacyClient], sender: FakeSender, connection_type: str,
             **kwargs: Any) -> tuple[LegacyClient, zmq.Socket]:
    client = legacy(connection_type, **kwargs)
    sid = client.start(["127.0.0.1", 0])
    return client, sender.data_to(sid)


# -- com port -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["4.4.3", "", "3.1.2", "5.0.0"])
def test_signal_frames(version: str, sender: FakeSender, legacy: Callable[..., LegacyClient]) -> None:
    assert legacy("STREAM", version=version).get_remote_version() == "4.4.3"
    assert sender.signals == [[version.encode(), str(os.getpid()).encode(), b"GET_VERSION", b"[]"]]


def test_initiate_sends_start_then_get_version_on_a_fresh_socket(sender: FakeSender,
                                                                 legacy: Callable[..., LegacyClient]) -> None:
    client = legacy("QUERY_NEXT_METADATA", appid="om")
    client.initiate([["localhost", 50101, 1, [".cbf", ".tif"]], ["localhost", 50102, 0]])
    start, version = sender.signals
    assert start[:3] == [b"4.4.3", b"om", b"START_QUERY_NEXT_METADATA"]
    me = client.targets[0][0].rpartition(":")[0]
    assert json.loads(start[3]) == [[f"{me}:50101", 1, ".*(.cbf|.tif)$"], [f"{me}:50102", 0, ".*"]]
    assert version[2] == b"GET_VERSION" and sender.peers[0] != sender.peers[1]
    assert client.remote_version == "4.4.3"


def test_suffix_lists_old_style(sender: FakeSender, legacy: Callable[..., LegacyClient]) -> None:
    legacy("STREAM", suffix_lists_on_wire=True).initiate(["localhost", 50101, 1, [".cbf"]])
    assert json.loads(sender.signals[0][3])[0][2] == [".cbf"]
    assert suffixes_to_regex([""]) == ".*"


def test_start_of_reply_quirk_and_error_mapping(sender: FakeSender, legacy: Callable[..., LegacyClient]) -> None:
    client = legacy("STREAM")
    sender.responder = lambda frames: [frames[2] + b"_METADATA"] if frames[2] != b"GET_VERSION" else \
        default_reply(frames)
    client.initiate(["localhost", 50101, 1])  # START_STREAM_METADATA starts with START_STREAM: accepted
    for reply, error in (([b"VERSION_CONFLICT", b"5.0"], VersionError), ([b"NO_VALID_HOST"], AuthenticationFailed),
                         ([b"STORING_DISABLED", b"4.4.3"], CommunicationFailed),
                         ([b"NO_VALID_SIGNAL"], CommunicationFailed), ([b"WHAT"], CommunicationFailed)):
        sender.responder = lambda frames, reply=reply: reply
        with pytest.raises(error):
            client.initiate(["localhost", 50101, 1])


def test_one_second_reply_window(sender: FakeSender, legacy: Callable[..., LegacyClient]) -> None:
    seen: list[int] = []

    def first_unanswered(frames: list[bytes]) -> list[bytes] | None:
        seen.append(1)
        return None if len(seen) == 1 else default_reply(frames)

    sender.responder = first_unanswered
    client = legacy("STREAM")
    started = time.monotonic()
    with pytest.raises(CommunicationFailed):
        client.get_remote_version()
    assert 0.9 < time.monotonic() - started < 1.8
    assert client.get_remote_version() == "4.4.3"
    assert sender.peers[0] != sender.peers[1]


@pytest.mark.parametrize(("connection_type", "stop"), [
    ("STREAM", "STOP_STREAM"), ("STREAM_METADATA", "STOP_STREAM"),
    ("QUERY_NEXT", "STOP_QUERY_NEXT"), ("QUERY_NEXT_METADATA", "STOP_QUERY_NEXT"),
])
def test_stop_and_force_stop(connection_type: str, stop: str, sender: FakeSender,
                             legacy: Callable[..., LegacyClient]) -> None:
    client = legacy(connection_type)
    client.start(["127.0.0.1", 0])
    client.initiate(["localhost", 50101, 1])
    client.stop()
    assert sender.signal_names() == [f"START_{connection_type}", "GET_VERSION", stop]
    assert sender.signals[2][3] == sender.signals[0][3]
    other = legacy(connection_type, appid="admin")
    assert other.force_stop(["localhost", 50101, 1]) == [f"FORCE_STOP_{connection_type}".encode()]


def test_raw_request(sender: FakeSender, zmq_context: zmq.Context) -> None:
    endpoint = f"tcp://127.0.0.1:{sender.com_port}"
    assert raw_request(endpoint, [b"4.4.3", b"1", b"GET_VERSION"], context=zmq_context) == [b"NO_VALID_SIGNAL"]
    sender.responder = lambda frames: None
    started = time.monotonic()
    assert raw_request(endpoint, [b"x"], timeout_s=0.2, context=zmq_context) is None
    assert time.monotonic() - started < 1.0


def test_detector_id_lookup(zmq_context: zmq.Context, sender: FakeSender) -> None:
    ports = {b"com_port": sender.com_port, b"request_port": sender.request_port}
    with FakeSender(zmq_context, lambda f: [b"OK"] if f == [b"IS_ALIVE"] else [str(ports[f[3]]).encode()]) as ctl:
        client = LegacyClient("STREAM_METADATA", "127.0.0.1", detector_id="det01", context=zmq_context,
                              control_server_port=ctl.com_port)
        try:
            assert (client.com_port, client.request_port) == (sender.com_port, sender.request_port)
            assert client.get_remote_version() == "4.4.3"
        finally:
            client.close()


# -- data -----------------------------------------------------------------------------------------------------


def test_query_next_per_chunk_and_cancel_on_timeout(sender: FakeSender, legacy: Callable[..., LegacyClient]) -> None:
    client, push = _started(legacy, sender, "QUERY_NEXT")
    for message in make_messages("f", DATA, 500):  # 5 chunks
        push.send_multipart(message)
    assert client.get(5000)[1] == DATA
    sid = client.socket_id.encode()
    assert sender.collect_requests(5, quiet_ms=50) == [[b"NEXT", sid]] * 5, "one NEXT per chunk (4.x quirk)"
    assert client.get(100) == [None, None]
    assert sender.collect_requests(7, quiet_ms=50)[5:] == [[b"NEXT", sid], [b"CANCEL", sid]]


def test_query_metadata_one_next_per_file(sender: FakeSender, legacy: Callable[..., LegacyClient]) -> None:
    client, push = _started(legacy, sender, "QUERY_NEXT_METADATA")
    push.send_multipart(metadata_message("a.cbf", "raw", 10**6))
    metadata, data = client.get(5000)
    assert (metadata["filename"], data) == ("a.cbf", None)
    assert sender.collect_requests(1, quiet_ms=50) == [[b"NEXT", client.socket_id.encode()]]


@pytest.mark.parametrize("size", [0, 999, 1000, 3000, 3001], ids=lambda s: f"size{s}")
def test_end_of_file_by_the_legacy_rule_only(size: int, sender: FakeSender,
                                            legacy: Callable[..., LegacyClient]) -> None:
    client, push = _started(legacy, sender, "STREAM")
    data = DATA[:size]
    messages = make_messages("f", data, 1000)
    if len(messages) > 1:  # a lying last_chunk must not end the file early: the emulator ignores new fields
        messages[0] = _tamper(messages[0], last_chunk=True, chunk_count=1)
    for message in messages:
        push.send_multipart(message)
    metadata, got = client.get(5000)
    assert got == data and metadata["chunk_number"] is None


def test_filesize_rules(sender: FakeSender, legacy: Callable[..., LegacyClient]) -> None:
    client, push = _started(legacy, sender, "STREAM")
    push.send_multipart(_tamper(make_messages("short", b"abc", 10, native=False)[0], filesize=None))
    assert client.get(5000)[1] == b"abc"  # a short chunk ends the file before filesize is looked at
    push.send_multipart(_tamper(make_messages("full", b"0123456789" * 2, 10, native=False)[0], filesize=None))
    with pytest.raises(FormatError, match="without filesize"):
        client.get(5000)


def test_alive_test_ignored_short_messages_refused(sender: FakeSender, legacy: Callable[..., LegacyClient]) -> None:
    client, push = _started(legacy, sender, "STREAM")
    push.send_multipart([b"ALIVE_TEST"])
    push.send_multipart(make_messages("f", b"abc", 10)[0])
    push.send_multipart([b"SOMETHING"])
    assert client.get(5000)[1] == b"abc"
    with pytest.raises(FormatError, match="1 frame"):
        client.get(5000)


def test_store_rules(tmp_path: Path, sender: FakeSender, legacy: Callable[..., LegacyClient]) -> None:
    client, push = _started(legacy, sender, "STREAM")
    a = make_messages("a.raw", DATA, 1000, relative_path="raw")
    for message in [a[0], a[0], a[1], a[0], a[1], a[1], a[2]]:  # repeats ignored, a 0 restarts the file
        push.send_multipart(message)
    assert client.store(str(tmp_path), 5000) == str(tmp_path / "raw" / "a.raw")
    assert (tmp_path / "raw" / "a.raw").read_bytes() == DATA
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["a.raw"]
    push.send_multipart(a[1])
    with pytest.raises(DataSavingError, match="first chunk seen is 1"):
        client.store(str(tmp_path), 5000)
    b = make_messages("b.raw", DATA, 500)
    for message in [b[0], b[1], b[2], b[1]]:
        push.send_multipart(message)
    with pytest.raises(DataSavingError, match="chunk 1 after chunk 2"):
        client.store(str(tmp_path), 5000)
    push.send_multipart(make_messages("x", b"x", 10, relative_path="../..")[0])
    with pytest.raises(DataSavingError, match="outside"):
        client.store(str(tmp_path), 5000)
    assert client.store(str(tmp_path), 50) is None
