"""Property tests of the kernel's wire codecs: any input decodes or raises the codec's own error, never an
IndexError, KeyError, UnicodeDecodeError, RecursionError or struct.error; what an encoder writes decodes back."""
from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_strategies import DEEP_JSON, FUZZ, INVALID_UTF8, frames, hostile_bytes, json_frame, json_values, names
from hidra_core import ingest
from hidra_core.client._assembly import Reassembler
from hidra_core.client.errors import ChecksumError
from hidra_core.errors import PathRefused, ProtocolError
from hidra_core.paths import split_checked
from hidra_core.protocol import HTYPES, DataMessage, decode_data, encode_metadata
from hidra_core.protocol.confirmation import (HEARTBEAT_TOPIC, Confirmation, decode_confirmation,
                                              encode_confirmations, encode_heartbeat)
from hidra_core.receiver.status import StatusBoard
from hidra_core.sender.clients.hosts import AccessPolicy, HostResolver
from hidra_core.sender.clients.registry import Registry
from hidra_core.sender.clients.signals import SignalHandler

sizes = st.integers(min_value=-5, max_value=2**64) | json_values
data_metadata = st.fixed_dictionaries({}, optional={
    "filename": names | json_values, "relative_path": names | json_values, "filesize": sizes, "chunksize": sizes,
    "chunk_number": sizes, "chunk_count": sizes, "last_chunk": st.booleans() | json_values,
    "htype": st.sampled_from([*HTYPES.values(), "hidra-file-9.0"]) | json_values, "series": names | json_values,
    "metadata": json_values, "confirmation_required": names | json_values, "file_checksum": json_values,
    "checksum_algorithm": st.sampled_from(["xxh3_64", "md5", "nope"]) | json_values})


def _decodes_or_protocol_error(frames_: list[bytes]) -> DataMessage | None:
    try:
        return decode_data(frames_)
    except ProtocolError as exc:
        assert str(exc)  # the error names the problem
        return None


@FUZZ
@given(frames())
def test_decode_data_of_arbitrary_frames_is_a_message_or_a_protocol_error(frames_):
    _decodes_or_protocol_error(frames_)


@FUZZ
@given(json_frame(data_metadata), st.binary(max_size=64))
def test_decode_data_of_almost_valid_metadata_is_a_message_or_a_protocol_error(meta, payload):
    msg = _decodes_or_protocol_error([meta, payload])
    if msg is not None:
        assert isinstance(msg.filename, str) and isinstance(msg.relative_path, str)
        assert msg.chunk_number >= 0 and msg.chunksize >= 1 and msg.filesize >= 0


@FUZZ
@given(st.fixed_dictionaries({"filename": st.text(min_size=1, max_size=30), "relative_path": st.text(max_size=30),
                              "filesize": st.integers(0, 2**40), "chunksize": st.integers(64, 2**31),
                              "chunk_number": st.integers(0, 2**20), "last_chunk": st.booleans(),
                              "htype": st.sampled_from(sorted(HTYPES.values())), "metadata": st.dictionaries(
                                  st.text(max_size=5), json_values, max_size=3)}), st.binary(max_size=64))
def test_decode_data_reads_back_what_encode_metadata_wrote(meta, payload):
    msg = decode_data([encode_metadata(meta), payload])
    assert (msg.filename, msg.relative_path, msg.filesize, msg.chunksize, msg.chunk_number, msg.is_last) == (
        meta["filename"], meta["relative_path"], meta["filesize"], meta["chunksize"], meta["chunk_number"],
        meta["last_chunk"])
    assert HTYPES[msg.kind] == meta["htype"] and msg.metadata == meta and bytes(msg.payload) == payload


@pytest.mark.parametrize("raw", DEEP_JSON + INVALID_UTF8)
def test_deeply_nested_or_invalid_utf8_metadata_is_a_protocol_error(raw):
    with pytest.raises(ProtocolError, match="metadata frame"):
        decode_data([raw, b""])


@FUZZ
@given(frames())
def test_decode_confirmation_of_arbitrary_frames_is_a_confirmation_or_a_protocol_error(frames_):
    try:
        decode_confirmation(frames_)
    except ProtocolError as exc:
        assert str(exc)


@pytest.mark.parametrize("proof", DEEP_JSON)
def test_confirmation_with_a_deeply_nested_proof_is_a_protocol_error(proof):
    with pytest.raises(ProtocolError, match="malformed confirmation"):
        decode_confirmation([b"topic", b"a/b.cbf", b"0", proof])


@FUZZ
@given(st.binary(max_size=20), st.text(max_size=40), st.integers(1, 50), st.none() | st.text(max_size=10),
       st.none() | st.text(max_size=20))
def test_confirmations_decode_back_to_what_was_encoded(topic, file_id, count, algorithm, checksum):
    decoded = [decode_confirmation(m) for m in encode_confirmations(topic, file_id, count, algorithm, checksum)]
    assert decoded[:-1] == [Confirmation(file_id, n, None) for n in range(count - 1)]
    assert decoded[-1] == Confirmation(file_id, count - 1, checksum)


@FUZZ
@given(st.text(max_size=20), st.dictionaries(st.text(max_size=5), json_values, max_size=4))
def test_heartbeat_carries_instance_and_info(instance, info):
    topic, who, body = encode_heartbeat(instance, info)
    assert (topic, who.decode(), json.loads(body)) == (HEARTBEAT_TOPIC, instance, info)


def _signal_handler() -> SignalHandler:
    resolver = HostResolver(0.05)
    policy = AccessPolicy(resolver, ["localhost"], ["localhost"], False)
    registries = {"streams": Registry("streams"), "queries": Registry("queries")}
    return SignalHandler("4.4.3", registries, policy, resolver, True, lambda: {"ok": True})


SIGNALS = ["GET_VERSION", "START_STREAM", "START_STREAM_METADATA", "START_QUERY_NEXT", "START_QUERY_NEXT_METADATA",
           "STOP_STREAM", "STOP_QUERY_NEXT", "FORCE_STOP_STREAM", "HIDRA_STATUS", "NO_SUCH_SIGNAL"]
hosts = st.sampled_from(["localhost", "127.0.0.1", "", "::1", "localhost:", "x" * 300, "\udcff"])
targets = st.lists(st.lists(st.builds(lambda h, p: f"{h}:{p}", hosts, st.integers(-1, 70000) | st.text(max_size=4))
                            | json_values, min_size=0, max_size=4)
                   .map(lambda t: t[:1] + t[1:]), max_size=3)
signal_requests = st.tuples(st.sampled_from([b"4.4.3", b"4.0", b"", b"5.1", *INVALID_UTF8]),
                            st.binary(max_size=8), st.sampled_from(SIGNALS).map(str.encode) | hostile_bytes(),
                            targets.map(lambda t: json.dumps(t).encode()) | hostile_bytes()).map(list)


@FUZZ
@given(signal_requests | frames())
def test_com_signal_handler_answers_every_request_and_never_raises(request):
    reply = _signal_handler().handle(request, "127.0.0.1")
    assert reply and all(isinstance(f, bytes) for f in reply)


@pytest.mark.parametrize("targets_frame", DEEP_JSON)
def test_com_signal_with_deeply_nested_targets_is_refused_as_no_valid_signal(targets_frame, caplog):
    reply = _signal_handler().handle([b"4.4.3", b"1", b"START_STREAM", targets_frame], "127.0.0.1")
    assert reply == [b"NO_VALID_SIGNAL"]
    assert "failed" not in caplog.text  # refused as malformed, not logged as a bug of the handler


@FUZZ
@given(frames())
def test_status_socket_answers_ok_or_error_to_anything(request):
    board = StatusBoard()
    assert board.answer(request)[0] in (b"OK", b"ERROR")


@FUZZ
@given(names, names)
def test_split_checked_keeps_every_accepted_name_below_the_root(relative_path, filename):
    try:
        parts, name = split_checked(relative_path, filename)
    except PathRefused as exc:
        assert str(exc)
        return
    root = "/target/root"
    joined = os.path.normpath(os.path.join(root, *parts, name))
    assert joined.startswith(root + "/") and len(joined.encode()) - len(root) < 4096


ingest_headers = st.fixed_dictionaries({"v": st.sampled_from([1, 1, 2]) | json_values,
                                        "op": st.sampled_from(["create", "write", "close", "abort", "file", "ack",
                                                               "error", "ping", "bogus"]) | json_values},
                                       optional={"file": sizes, "offset": sizes, "size": sizes, "upto": sizes,
                                                 "name": names | json_values, "producer": names | json_values,
                                                 "error": json_values})


@FUZZ
@given(st.lists(json_frame(ingest_headers) | hostile_bytes(), min_size=0, max_size=3))
def test_ingest_decode_of_arbitrary_frames_is_a_message_or_a_protocol_error(frames_):
    try:
        msg = ingest.decode(frames_)
    except ProtocolError as exc:
        assert str(exc)
        return
    assert msg.op in ("create", "write", "close", "abort", "file", "ack", "error", "ping")


@pytest.mark.parametrize("header", [b"[" * (ingest.MAX_HEADER - 1), b'{"v": 1, "op": ' + b"[" * 60_000])
def test_ingest_header_nested_too_deeply_is_a_protocol_error(header):
    with pytest.raises(ProtocolError, match="header is not a UTF-8 JSON object"):
        ingest.decode([header])


@FUZZ
@given(st.sampled_from(["create", "write", "close", "abort", "file", "ack", "error", "ping"]),
       st.fixed_dictionaries({"file": st.integers(0, 2**40), "offset": st.integers(0, 2**40),
                              "size": st.integers(0, 2**40), "upto": st.integers(0, 2**40),
                              "name": st.text(max_size=20), "producer": st.text(max_size=20),
                              "error": st.text(max_size=20)}), st.binary(max_size=32))
def test_ingest_decode_reads_back_what_encode_wrote(op, fields, data):
    with_data = op in ("write", "file")
    msg = ingest.decode([ingest.encode(op, **fields), data] if with_data else [ingest.encode(op, **fields)])
    assert msg.op == op and msg.data == (data if with_data else None)
    assert {k: msg.fields[k] for k in fields} == fields


@pytest.mark.parametrize("op", [[], {}, [["create"]]])
def test_ingest_op_that_is_a_list_or_an_object_is_a_protocol_error(op):
    with pytest.raises(ProtocolError, match="unknown op"):
        ingest.decode([json.dumps({"v": 1, "op": op, "file": 1}).encode()])


def _chunk(payload: bytes, **fields) -> list[bytes]:
    meta = {"htype": "hidra-file-1.0", "filename": "a.bin", "relative_path": "", "filesize": 20, "chunksize": 10,
            "chunk_count": 2, "chunk_number": 0, **fields}
    return [encode_metadata(meta), payload]


@pytest.mark.parametrize("payload, fields, problem", [
    (b"x" * 11, {}, "chunk 0 has 11 bytes, more than its chunksize 10"),
    (b"x" * 10, {"chunk_number": 2}, "chunk number 2 is out of range: chunk_count is 2"),
    (b"x" * 10, {"chunk_number": 2**63, "chunk_count": 1}, "out of range: chunk_count is 1"),
])
def test_chunk_larger_than_its_chunksize_or_beyond_its_chunk_count_is_refused_before_it_is_written(
        payload, fields, problem):
    with pytest.raises(ProtocolError, match=re.escape(problem)):
        decode_data(_chunk(payload, **fields))


def test_long_path_of_many_components_is_refused_in_linear_time():
    # NOTE: 1 MiB of "a/": quoting the whole path once per component was quadratic (10 minutes for this one)
    with pytest.raises(PathRefused, match=r"is 1048578 bytes; the file system allows 4095") as err:
        split_checked("a/" * (1 << 19), "x")
    assert len(str(err.value)) < 1000


@pytest.mark.parametrize("frames_", [
    [b"4.4.3", b"1", b"\x00" * (64 << 20), b"[]"],
    [b"4.4.3", b"1", b"START_STREAM", json.dumps([["localhost:" + "9" * (64 << 20)]]).encode()],
])
def test_com_refusal_of_a_huge_signal_quotes_only_its_start(frames_, caplog):
    caplog.set_level("INFO")
    assert _signal_handler().handle(frames_, "127.0.0.1") == [b"NO_VALID_SIGNAL"]
    assert "NO_VALID_SIGNAL" in caplog.text and len(caplog.text) < 2000


def test_data_message_with_a_huge_field_is_refused_with_a_short_message():
    with pytest.raises(ProtocolError, match=r"field 'series' must be a string, got \[") as err:
        decode_data([encode_metadata({"filename": "a", "series": [0] * (1 << 20)}), b""])
    assert len(str(err.value)) < 1000


@pytest.mark.parametrize("socket_id", ["localhost:²", "localhost:" + "9" * 5000, "localhost:123456"])
def test_socket_id_with_a_port_that_is_no_port_is_refused_as_no_valid_signal(socket_id, caplog):
    reply = _signal_handler().handle([b"4.4.3", b"1", b"STOP_STREAM", json.dumps([[socket_id]]).encode()],
                                     "127.0.0.1")
    assert reply == [b"NO_VALID_SIGNAL"]
    assert "failed" not in caplog.text


@FUZZ
@given(st.lists(json_frame(data_metadata).map(lambda m: [m]) | frames(3), max_size=8), st.booleans())
def test_client_reassembly_takes_any_message_sequence(messages, drop_corrupt):
    assembler = Reassembler(drop_corrupt=drop_corrupt)
    for frames_ in messages:
        msg = frames_ + [b"0123456789"] if len(frames_) == 1 else frames_
        try:
            assembler.feed(msg)
        except ChecksumError:
            assert not drop_corrupt


@pytest.mark.parametrize("raw", DEEP_JSON)
def test_client_reassembly_drops_metadata_nested_too_deeply(raw):
    assembler = Reassembler()
    assert assembler.feed([raw, b""]) is None and assembler.dropped == 1
