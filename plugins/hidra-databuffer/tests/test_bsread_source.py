"""The ``bsread`` source against the real ``bsread`` sender (psi-bsread) over TCP loopback, and against hostile raw
multipart messages from a plain PUSH socket: every pulse decodes back to what was sent; bad messages are counted
and the stream goes on."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
import zmq
from bsread import PUB, PUSH
from bsread.data.helpers import get_value_bytes
from bsread.sender import Sender
from pydantic import ValidationError

from hidra_core import PULSE, FileEvent
from hidra_core.testing import EventSourceContract, poll_until, wait_until
from hidra_databuffer import bsread_decode
from hidra_databuffer.bsread_source import BsreadConfig, BsreadSource
from hidra_databuffer.values import TYPES, decode_pulse

Stream = Callable[..., tuple[Sender, BsreadSource]]
STAMP = (1_700_000_000, 123_456_789)


def _endpoint(sender: Sender) -> str:
    return sender.stream.socket.getsockopt_string(zmq.LAST_ENDPOINT)


@pytest.fixture
def stream(zmq_context: zmq.Context) -> Iterator[Stream]:
    """``stream(channels, mode=PUSH, options={...}, **sender_kwargs)``: a real bsread ``Sender`` bound to a random
    loopback port with ``channels`` (name -> metadata) added, and an opened source connected to it."""
    made: list[tuple[Sender, BsreadSource]] = []

    def make(channels: Mapping[str, dict[str, Any]], mode: Any = PUSH, options: Mapping[str, Any] | None = None,
             **kwargs: Any) -> tuple[Sender, BsreadSource]:
        sender = Sender(address="tcp://127.0.0.1", port=0, mode=mode, **kwargs)
        for name, metadata in channels.items():
            sender.add_channel(name, metadata=dict(metadata))
        sender.open()
        source = BsreadSource(BsreadConfig(address=_endpoint(sender), mode="sub" if mode == PUB else "pull",
                                           **(options or {})))
        source.open(zmq_context)
        made.append((sender, source))
        return sender, source

    yield make
    for sender, source in made:
        source.close()
        sender.close()


def _pulses(source: BsreadSource, n: int) -> list[FileEvent]:
    return poll_until(source, lambda events: len(events) >= n, 20)


def _scalar(type_name: str, encoding: str, seed: int) -> np.ndarray:
    order = "<" if encoding == "little" else ">"
    if type_name == "bool":
        return np.array([seed % 2 == 1])
    return np.array([seed * 3 + 1], dtype=order + TYPES[type_name])


def _array(type_name: str, encoding: str, seed: int) -> np.ndarray:
    order = "<" if encoding == "little" else ">"
    if type_name == "bool":
        return (np.arange(12) % (seed + 2) == 0).reshape(3, 4)
    # NOTE: arithmetic makes native order: the byte order is set last
    return (np.arange(12) + seed).astype(order + TYPES[type_name]).reshape(3, 4)  # bsread shape [4, 3]


def _all_types(encoding: str, compression: str) -> dict[str, dict[str, Any]]:
    meta = {"encoding": encoding, "compression": compression}
    channels = {}
    for t in TYPES:
        if t != "string":
            channels[f"S:{t}"] = {"type": t, "shape": [1], **meta}
            channels[f"A:{t}"] = {"type": t, "shape": [4, 3], **meta}
    channels["S:string"] = {"type": "string", "shape": [1], **meta}
    return channels


def _values(encoding: str, seed: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for t in TYPES:
        if t != "string":
            values[f"S:{t}"] = _scalar(t, encoding, seed)
            values[f"A:{t}"] = _array(t, encoding, seed)
    values["S:string"] = f"pulse {seed}: héllo wörld ✓"
    return values


def _assert_same(got: Any, sent: Any, name: str) -> None:
    if isinstance(sent, str):
        assert got == sent, name
        return
    want = sent[0] if sent.shape == (1,) else sent
    assert np.shape(got) == np.shape(want), name
    assert np.dtype(type(got) if np.isscalar(got) else got.dtype) == want.dtype.newbyteorder("="), name
    assert np.array_equal(got, want), name


@pytest.mark.parametrize("encoding", ["little", "big"])
@pytest.mark.parametrize("compression", ["none", "lz4", "bitshuffle_lz4"])
def test_every_type_and_compression_decodes_back_to_what_the_real_sender_sent(
        stream: Stream, encoding: str, compression: str) -> None:
    channels = _all_types(encoding, compression)
    sender, source = stream(channels)
    sent = [_values(encoding, seed) for seed in range(3)]
    for i, values in enumerate(sent):
        sender.send(*values.values(), timestamp=(STAMP[0] + i, STAMP[1]), check_data=False)
    events = _pulses(source, 3)
    for i, (event, values) in enumerate(zip(events, sent)):
        assert (event.kind, event.filename, event.relative_path, event.series) == (PULSE, f"pulse_{i}", "", "")
        assert event.source_path == source.root and event.version == f"{i}:{STAMP[0] + i}.{STAMP[1]}"
        meta = json.loads(json.dumps(event.metadata, allow_nan=False))  # what the wire carries
        assert (meta["pulse_id"], meta["global_timestamp"]) == (i, [STAMP[0] + i, STAMP[1]])
        assert [c["name"] for c in meta["channels"]] == list(channels)
        for entry in meta["channels"]:
            assert {k: entry[k] for k in ("type", "shape", "encoding", "compression")} == {
                k: channels[entry["name"]][k] for k in ("type", "shape", "encoding", "compression")}
            assert entry["present"] and entry["timestamp"] == [STAMP[0] + i, STAMP[1]]
        # NOTE: the payload is the value frames as the sender made them, compressed form kept
        frames = [get_value_bytes(v, compression, channel_type=channels[k]["type"]) for k, v in values.items()]
        assert bytes(memoryview(event.payload)) == b"".join(frames) and event.size == len(b"".join(frames))
        decoded = decode_pulse(meta, event.payload)
        for name, value in values.items():
            _assert_same(decoded[name], value, name)
    assert source.stats["pulses"] == 3 and source.stats["malformed"] == source.stats["bad_values"] == 0


def test_none_value_is_an_absent_channel_that_adds_no_bytes(stream: Stream) -> None:
    channels = {"X:SCALAR": {"type": "float64"}, "X:IMAGE": {"type": "uint16", "shape": [6, 5]},
                "X:NAME": {"type": "string"}}
    sender, source = stream(channels, data_compression="bitshuffle_lz4")
    image = np.arange(30, dtype=np.uint16).reshape(5, 6)
    sender.send(1.0, image, "a", check_data=False)
    sender.send(2.0, None, "b", check_data=False)
    sender.send(None, image + 1, None, check_data=False)
    events = _pulses(source, 3)
    entries = [e.metadata["channels"] for e in events]
    assert [[c["present"] for c in chans] for chans in entries] == [[True] * 3, [True, False, True],
                                                                    [False, True, False]]
    absent = entries[1][1]
    assert (absent["size"], absent["timestamp"], absent["type"]) == (0, None, "uint16")
    assert entries[1][2]["offset"] == entries[1][0]["size"]  # nothing for the absent image in between
    values = [decode_pulse(e.metadata, e.payload) for e in events]
    assert values[1] == {"X:SCALAR": 2.0, "X:IMAGE": None, "X:NAME": "b"}
    assert values[2]["X:SCALAR"] is None and values[2]["X:NAME"] is None
    assert np.array_equal(values[2]["X:IMAGE"], image + 1)
    assert events[2].size == entries[2][1]["size"]  # a single value is the whole payload, its frame not copied
    assert isinstance(events[2].payload, memoryview) and not isinstance(events[0].payload, memoryview)


def test_pulse_id_gaps_and_rewinds_are_counted_and_warned_about_once_each(
        stream: Stream, caplog: pytest.LogCaptureFixture) -> None:
    sender, source = stream({"A": {"type": "float64"}})
    ids = [10, 11, 14, 15, 20, 21, 3]
    for pid in ids:
        sender.send(float(pid), pulse_id=pid)
    events = _pulses(source, len(ids))
    assert [e.filename for e in events] == [f"pulse_{pid}" for pid in ids]
    assert [decode_pulse(e.metadata, e.payload)["A"] for e in events] == [float(pid) for pid in ids]
    assert {k: source.stats[k] for k in ("gaps", "missing", "rewinds")} == {"gaps": 2, "missing": 6, "rewinds": 1}
    gaps = [r.getMessage() for r in caplog.records if "gap" in r.getMessage()]
    assert len(gaps) == 1 and "from 11 to 14: 2 pulse(s) missing" in gaps[0]  # the second one is summed up later
    assert any("from 21 back to 3" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("dh_compression", ["lz4", "bitshuffle_lz4"])
def test_compressed_data_header_is_decoded(stream: Stream, dh_compression: str) -> None:
    sender, source = stream({"A": {"type": "int32"}, "B": {"type": "float32", "shape": [3]}},
                            data_header_compression=dh_compression)
    sender.send(np.array([7], np.int32), np.array([1.5, 2.5, 3.5], np.float32), check_data=False)
    (event,) = _pulses(source, 1)
    values = decode_pulse(event.metadata, event.payload)
    assert values["A"] == 7 and values["B"].tolist() == [1.5, 2.5, 3.5]
    assert event.metadata["hash"] == sender.main_header["hash"]


def test_changed_channel_list_is_parsed_once_per_hash(stream: Stream, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = bsread_decode.parse_data_header

    def spy(frame: memoryview, dh_compression: str) -> Any:
        parsed.append(bytes(frame).decode())
        return real(frame, dh_compression)

    monkeypatch.setattr(bsread_decode, "parse_data_header", spy)
    sender, source = stream({"A": {"type": "float64"}})
    for n in range(3):
        sender.send(float(n), check_data=False)
    first = _pulses(source, 3)
    sender.add_channel("B", metadata={"type": "string"})  # NOTE: the open sender makes a new data header
    for n in range(3):
        sender.send(float(n), f"b{n}", check_data=False)
    second = _pulses(source, 3)
    assert len(parsed) == 2 and '"B"' in parsed[1]
    assert len({e.metadata["hash"] for e in first}) == 1 and first[0].metadata["hash"] != second[0].metadata["hash"]
    assert [decode_pulse(e.metadata, e.payload) for e in second] == [{"A": float(n), "B": f"b{n}"} for n in range(3)]


def test_sub_mode_receives_a_published_stream(stream: Stream) -> None:
    sender, source = stream({"A": {"type": "int64"}}, mode=PUB)
    events: list[FileEvent] = []

    def joined() -> bool:  # NOTE: a SUB that has not joined yet misses what is published: send until one arrives
        sender.send(-1, check_data=False)
        events.extend(source.poll(50))
        return bool(events)

    wait_until(joined, 20, what="the SUB socket to receive a first message", interval_s=0)
    for n in range(5):
        sender.send(n * 10, check_data=False)
    tail = poll_until(source, lambda got: any(decode_pulse(e.metadata, e.payload)["A"] == 40 for e in got), 20)
    values = [decode_pulse(e.metadata, e.payload)["A"] for e in events + tail]
    assert [v for v in values if v >= 0] == [0, 10, 20, 30, 40]


def test_a_poll_takes_at_most_receive_batch_messages(stream: Stream) -> None:
    sender, source = stream({"A": {"type": "float64"}}, options={"receive_batch": 2})
    for n in range(7):
        sender.send(float(n))
    batches: list[int] = []

    def polled() -> bool:
        batches.append(len(source.poll(100)))
        return sum(batches) >= 7

    wait_until(polled, 20, what="seven pulses", interval_s=0)
    assert max(batches) <= 2 and sum(batches) == 7


# --- hostile raw messages ---------------------------------------------------------------------------------------

def _captured(zmq_context: zmq.Context, n: int) -> list[list[bytes]]:
    """``n`` real messages of the bsread sender (channels A float64, IMG uint16 [3, 2] lz4), as frames."""
    pull = zmq_context.socket(zmq.PULL)
    pull.linger = 0
    try:
        with Sender(address="tcp://127.0.0.1", port=0, mode=PUSH) as sender:
            sender.add_channel("A", metadata={"type": "float64"})
            sender.add_channel("IMG", metadata={"type": "uint16", "shape": [3, 2], "compression": "lz4"})
            pull.connect(_endpoint(sender))
            for pid in range(n):
                sender.send(float(pid), np.full((2, 3), pid, np.uint16), check_data=False)
            out = []
            for _ in range(n):
                assert pull.poll(10_000), "the sender sent nothing"
                out.append(pull.recv_multipart())
            return out
    finally:
        pull.close()


def _header(parts: list[bytes], **changes: Any) -> list[bytes]:
    head = json.loads(parts[0])
    head.update(changes)
    return [json.dumps(head).encode(), *parts[1:]]


def _other_data_header(parts: list[bytes], text: bytes) -> list[bytes]:
    return [*_header(parts, hash="0" * 32)[:1], text, *parts[2:]]


HOSTILE: dict[str, tuple[Callable[[list[bytes]], list[bytes]], str]] = {
    "truncated multipart": (lambda p: p[:-1], "malformed"),
    "headers only": (lambda p: p[:2], "malformed"),
    "one frame": (lambda p: p[:1], "malformed"),
    "main header not JSON": (lambda p: [b'{"htype": "bsr_m-1.1", "pulse_id"', *p[1:]], "malformed"),
    "main header a JSON list": (lambda p: [b"[1, 2]", *p[1:]], "malformed"),
    "main header of another htype": (lambda p: _header(p, htype="dimage-1.0"), "malformed"),
    "pulse id not an integer": (lambda p: _header(p, pulse_id="7"), "malformed"),
    "no global timestamp": (lambda p: _header(p, global_timestamp=None), "malformed"),
    "unknown data header compression": (lambda p: _header(p, dh_compression="zstd"), "malformed"),
    "data header not JSON": (lambda p: _other_data_header(p, b"\xff\xfe garbage"), "malformed"),
    "data header of another htype": (lambda p: _other_data_header(p, b'{"htype": "x", "channels": []}'),
                                     "malformed"),
    "data header with an unknown type": (lambda p: _other_data_header(
        p, b'{"htype": "bsr_d-1.1", "channels": [{"name": "A", "type": "float128"}]}'), "malformed"),
    "lz4 data header that does not decompress": (lambda p: [*_header(p, hash="1" * 32, dh_compression="lz4")[:1],
                                                            b"\x40\x00\x00\x00\xff\xff", *p[2:]], "malformed"),
    "empty channel list": (lambda p: _other_data_header(p, b'{"htype": "bsr_d-1.1", "channels": []}'), "empty"),
    # NOTE: these cost the one value (bad_values:<channel dropped>), not the pulse
    "value frame of the wrong size": (lambda p: [*p[:2], p[2][:-1], *p[3:]], "bad_values:A"),
    "lz4 frame stating the wrong size": (lambda p: [*p[:4], b"\x0b\x00\x00\x00" + p[4][4:], *p[5:]],
                                         "bad_values:IMG"),
    "timestamp frame of the wrong size": (lambda p: [*p[:5], p[5][:8]], "bad_values:IMG"),
}


def _received(source: BsreadSource, n: int) -> list[FileEvent]:
    """The events of polls until the source has received ``n`` messages, good or bad."""
    events: list[FileEvent] = []

    def done() -> bool:
        events.extend(source.poll(50))
        return source.stats["received"] >= n

    wait_until(done, 20, what=f"{n} messages", interval_s=0)
    return events


@pytest.fixture
def raw_feed(zmq_context: zmq.Context) -> Iterator[tuple[zmq.Socket, BsreadSource]]:
    push = zmq_context.socket(zmq.PUSH)
    push.linger = 0
    port = push.bind_to_random_port("tcp://127.0.0.1")
    source = BsreadSource(BsreadConfig(address=f"tcp://127.0.0.1:{port}"))
    source.open(zmq_context)
    yield push, source
    source.close()
    push.close()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_message_is_counted_and_the_stream_continues(
        zmq_context: zmq.Context, raw_feed: tuple[zmq.Socket, BsreadSource], name: str,
        caplog: pytest.LogCaptureFixture) -> None:
    mutate, expect = HOSTILE[name]
    stat, _, dropped = expect.partition(":")
    push, source = raw_feed
    good = _captured(zmq_context, 4)
    for parts in [good[0], good[1], mutate(good[2]), mutate(good[2]), good[3]]:
        push.send_multipart(parts)
    events = _received(source, 5)
    assert source.stats[stat] == 2
    values = {e.filename: decode_pulse(e.metadata, e.payload) for e in events}
    if dropped:
        assert [e.filename for e in events] == ["pulse_0", "pulse_1", "pulse_2", "pulse_2", "pulse_3"]
        kept = values["pulse_2"]
        assert kept["A"] == (None if dropped == "A" else 2.0)
        assert (kept["IMG"] is None) if dropped == "IMG" else kept["IMG"].tolist() == [[2] * 3] * 2
    else:
        assert [e.filename for e in events] == ["pulse_0", "pulse_1", "pulse_3"]
        assert source.stats["malformed"] + source.stats["empty"] == 2
    assert values["pulse_3"]["A"] == 3.0 and values["pulse_3"]["IMG"].tolist() == [[3] * 3] * 2
    said = [r for r in caplog.records if r.name.startswith("hidra_databuffer") and r.levelno >= logging.WARNING
            and "pulse id" not in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]  # the same problem twice is logged once


def test_new_data_header_under_an_unchanged_hash_is_parsed_anew(
        zmq_context: zmq.Context, raw_feed: tuple[zmq.Socket, BsreadSource]) -> None:
    push, source = raw_feed
    good = _captured(zmq_context, 2)
    header = json.loads(good[1][1])
    header["channels"].append({"name": "B", "type": "int8"})
    push.send_multipart(good[0])
    push.send_multipart([good[1][0], json.dumps(header).encode(), *good[1][2:], b"\x05", b""])
    events = _received(source, 2)
    assert decode_pulse(events[1].metadata, events[1].payload)["B"] == 5 and source.stats["malformed"] == 0


def test_problems_counted_but_not_logged_are_summed_up_at_close(
        zmq_context: zmq.Context, raw_feed: tuple[zmq.Socket, BsreadSource], caplog: pytest.LogCaptureFixture) -> None:
    push, source = raw_feed
    for _ in range(4):
        push.send_multipart([b"not json", b"{}"])
    assert _received(source, 4) == []
    source.close()
    said = [r.getMessage() for r in caplog.records if "main_header" in r.getMessage()]
    assert len(said) == 2 and "not JSON" in said[0] and "3 more main_header problems" in said[1]


# --- config and contract ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"address": "host:9999"}, {"address": "tcp://h:1", "mode": "push"},
                                     {"address": "tcp://h:1", "rcvhwm": 0}])
def test_bad_config_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BsreadConfig(**options)


class TestBsreadSourceContract(EventSourceContract):
    """The rules every event source owes the kernel; a pulse stream reports no files, so the file rules do not
    apply (its pulses are checked above against the real sender)."""

    driver_name = "bsread"

    def make_config(self, tmp_path: Path) -> Mapping[str, Any]:
        return {"address": "inproc://hidra-bsread-contract"}  # NOTE: nobody binds it; connecting is enough here

    def test_produced_file_is_reported(self, tmp_path: Path, opened_source: Any) -> None:
        pytest.skip("a bsread stream reports pulses, not files")

    def test_nested_file_has_a_slash_separated_relative_path(self, tmp_path: Path, opened_source: Any) -> None:
        pytest.skip("a bsread stream reports pulses, not files")

    def test_the_default_fetcher_sends_in_memory_data(self) -> None:
        assert BsreadSource.default_fetcher == "inline"
