"""Wire codecs against golden messages: data chunks (native ``hidra-file-1.0`` and legacy 4.x) and confirmations.

Legacy end-of-file rule (hidra4-protocol.md §6.2): a chunk is the last when ``len(payload) < chunksize``, or when
``filesize % chunksize == 0`` and ``filesize // chunksize == chunk_number + 1``.
"""
from __future__ import annotations

import json
import re
from typing import Any

import pytest

from hidra_core import FileEvent, FileStat, ProtocolError
from hidra_core.sender.outgoing import Checksums, Outgoing
from hidra_core.protocol import ALIVE_TEST, HTYPE, HTYPES, UnknownType, decode_data, encode_metadata, is_alive_test
from hidra_core.protocol.confirmation import (
    HEARTBEAT_TOPIC,
    Confirmation,
    decode_confirmation,
    encode_confirmations,
    encode_heartbeat,
)

# What a HiDRA 4.4 sender puts in the first frame (json.dumps with default separators, no htype).
LEGACY_META = (b'{"filename": "test_001.cbf", "relative_path": "current/raw", "source_path": "/ramdisk", '
               b'"filesize": 25, "file_mod_time": 1700000000.5, "file_create_time": 1700000000.0, '
               b'"chunksize": 10, "chunk_number": 2, "confirmation_required": "sender01_4242", "version": "4.4.2"}')

NATIVE_META = (b'{"confirmation_required":"sender01_4242","version":"4.4.3","htype":"hidra-file-1.0",'
               b'"filename":"test_001.cbf","relative_path":"current/raw","source_path":"/ramdisk",'
               b'"filesize":25,"file_mod_time":1700000000.5,"file_create_time":1700000000.0,"chunksize":10,'
               b'"chunk_count":3,"checksum_algorithm":"xxh3_64","chunk_number":2,"last_chunk":true,'
               b'"chunk_checksum":"0123456789abcdef","file_checksum":"fedcba9876543210"}')


def _legacy(filesize: int, chunksize: int, chunk_number: int, payload: bytes, **extra: Any) -> list[bytes]:
    meta = {"filename": "f.raw", "relative_path": "", "filesize": filesize, "chunksize": chunksize,
            "chunk_number": chunk_number, "file_mod_time": 1.0, **extra}
    return [json.dumps(meta).encode(), payload]


def _native(**overrides: Any) -> dict[str, Any]:
    meta = json.loads(NATIVE_META)
    meta.update(overrides)
    return meta


# --- golden messages ----------------------------------------------------------------------------------------


def test_golden_legacy_message() -> None:
    msg = decode_data([LEGACY_META, b"12345"])
    assert not msg.native
    assert (msg.filename, msg.relative_path, msg.filesize, msg.chunksize, msg.chunk_number) == (
        "test_001.cbf", "current/raw", 25, 10, 2)
    assert msg.is_last  # 5 < chunksize
    assert msg.file_id == "current/raw/test_001.cbf"
    assert msg.payload == b"12345"
    assert msg.metadata["confirmation_required"] == "sender01_4242" and msg.metadata["version"] == "4.4.2"


def test_golden_native_message() -> None:
    msg = decode_data([NATIVE_META, b"12345"])
    assert msg.native and msg.metadata["htype"] == HTYPE == "hidra-file-1.0"
    assert (msg.filename, msg.relative_path, msg.filesize, msg.chunksize, msg.chunk_number, msg.is_last) == (
        "test_001.cbf", "current/raw", 25, 10, 2, True)
    assert msg.metadata["file_checksum"] == "fedcba9876543210"


def test_native_last_chunk_flag_wins_over_the_legacy_rule() -> None:
    # a short payload that the 4.x rule would call "last", but the sender says it is not (and vice versa)
    assert not decode_data([encode_metadata(_native(last_chunk=False)), b"12345"]).is_last
    full = decode_data([encode_metadata(_native(chunk_number=0, last_chunk=True, filesize=99)), b"0123456789"])
    assert full.is_last


def test_native_message_without_last_chunk_falls_back_to_the_legacy_rule() -> None:
    meta = _native()
    del meta["last_chunk"]
    assert decode_data([encode_metadata(meta), b"12345"]).is_last
    assert not decode_data([encode_metadata({**meta, "chunk_number": 0}), b"0123456789"]).is_last


@pytest.mark.parametrize(("filesize", "chunksize", "chunks"), [
    (25, 10, [10, 10, 5]),  # short last chunk
    (20, 10, [10, 10]),  # exact multiple: the last chunk is full-size
    (10, 10, [10]),  # one full chunk
    (3, 10, [3]),  # one short chunk
    (0, 10, [0]),  # empty file: one empty chunk
])
def test_legacy_end_of_file_rule(filesize: int, chunksize: int, chunks: list[int]) -> None:
    flags = [decode_data(_legacy(filesize, chunksize, n, b"x" * size)).is_last for n, size in enumerate(chunks)]
    assert flags == [False] * (len(chunks) - 1) + [True]


def test_legacy_relative_path_null_and_leading_slash() -> None:
    msg = decode_data(_legacy(1, 10, 0, b"x", relative_path=None))
    assert msg.relative_path == "" and msg.file_id == "f.raw"
    assert decode_data(_legacy(1, 10, 0, b"x", relative_path="/scan1")).file_id == "scan1/f.raw"


def test_frames_may_be_buffers() -> None:
    class FrameLike:  # zmq.Frame exposes .buffer and supports bytes()
        def __init__(self, data: bytes) -> None:
            self.buffer = memoryview(data)

        def __bytes__(self) -> bytes:
            return bytes(self.buffer)

    payload = FrameLike(b"0123456789")
    msg = decode_data([FrameLike(LEGACY_META.replace(b'"chunk_number": 2', b'"chunk_number": 0')), payload])
    assert msg.payload is payload and not msg.is_last  # length taken from .buffer: 10 == chunksize
    assert decode_data([memoryview(LEGACY_META), memoryview(b"12")]).is_last


@pytest.mark.parametrize("chunks", [[0], [10, 10, 5], [10, 10], [7]])
def test_sender_output_decodes_with_the_right_end_of_file(chunks: list[int]) -> None:
    size = sum(chunks)
    data = [b"y" * n for n in chunks]
    out = Outgoing(FileEvent("/src", "scan1", "f.raw"), FileStat(size, 10**9, 10**9), 10,
                   {"confirmation_required": "t", "version": "4.4.3"})
    sums = Checksums(len(chunks))
    out.pending.extend(sums.add(chunk) for chunk in data)  # as the fetch worker hands them in
    decoded = []
    while not out.done:
        meta, payload = out.next_message()
        decoded.append(decode_data([meta, payload]))
    assert [m.chunk_number for m in decoded] == list(range(len(chunks)))
    assert [m.is_last for m in decoded] == [False] * (len(chunks) - 1) + [True]
    assert all(m.native and m.filesize == size and m.metadata["chunk_count"] == len(chunks) for m in decoded)
    # a 4.x receiver ignores last_chunk: the legacy rule must agree on every chunk
    for m in decoded:
        legacy = {k: v for k, v in m.metadata.items() if k not in ("htype", "last_chunk")}
        assert decode_data([json.dumps(legacy).encode(), m.payload]).is_last == m.is_last
    assert decoded[-1].metadata["file_checksum"] == out.checksum != ""


def test_encode_metadata_is_compact_utf8() -> None:
    assert encode_metadata({"a": 1, "name": "bild-ü.tif"}) == '{"a":1,"name":"bild-ü.tif"}'.encode()
    meta = _native(filename="bild-ü.tif")
    assert decode_data([encode_metadata(meta), b""]).metadata == meta


def test_alive_test_is_recognised_and_is_not_a_data_message() -> None:
    assert is_alive_test([ALIVE_TEST]) and is_alive_test([memoryview(b"ALIVE_TEST")])
    assert not is_alive_test([b"ALIVE_TEST", b""]) and not is_alive_test([b"alive"])
    with pytest.raises(ProtocolError, match="2 frames, got 1"):
        decode_data([ALIVE_TEST])


# --- malformed data messages --------------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "why"), [
    ([], "2 frames, got 0"),
    ([LEGACY_META], "2 frames, got 1"),
    ([LEGACY_META, b"x", b"y"], "2 frames, got 3"),
    ([b"{not json", b"x"], "not JSON"),
    ([b"\xff\xfe\x00", b"x"], "not JSON"),
    ([b"[1, 2]", b"x"], "not a JSON object"),
    ([b"null", b"x"], "not a JSON object"),
    ([b'"text"', b"x"], "not a JSON object"),
])
def test_malformed_frames(frames: list[bytes], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_data(frames)


@pytest.mark.parametrize(("change", "why"), [
    ({"htype": "hidra-file-2.0"}, "unknown message type (htype 'hidra-file-2.0')"),
    ({"htype": 1}, "unknown message type (htype 1)"),
    ({"series": 7}, "'series' must be a string, got 7"),
    ({"metadata": [1]}, "'metadata' must be a JSON object, got [1]"),
    ({"filesize": None}, "'filesize' must be an integer >= 0, got None"),
    ({"filesize": -1}, "'filesize' must be an integer >= 0, got -1"),
    ({"filesize": True}, "'filesize' must be an integer >= 0, got True"),
    ({"filesize": "25"}, "'filesize' must be an integer"),
    ({"filesize": 25.0}, "'filesize' must be an integer"),
    ({"chunksize": 0}, "'chunksize' must be an integer >= 1, got 0"),
    ({"chunksize": True}, "'chunksize' must be an integer >= 1, got True"),
    ({"chunk_number": False}, "'chunk_number' must be an integer >= 0, got False"),
    ({"chunk_number": -1}, "'chunk_number' must be an integer >= 0, got -1"),
    ({"filename": None}, "'filename' must be a string"),
    ({"filename": 7}, "'filename' must be a string, got 7"),
    ({"relative_path": ["a"]}, "'relative_path' must be a string"),
])
def test_malformed_metadata_names_the_field(change: dict[str, Any], why: str) -> None:
    meta = _native(**change)
    with pytest.raises(ProtocolError, match=re.escape(why)):
        decode_data([encode_metadata(meta), b"12345"])


def test_an_unknown_type_is_its_own_error_so_the_receiver_counts_it_apart() -> None:
    with pytest.raises(UnknownType, match="knows"):
        decode_data([encode_metadata(_native(htype="hidra-hologram-1.0")), b"12345"])


@pytest.mark.parametrize("kind", sorted(HTYPES))
def test_each_message_type_round_trips_with_series_and_metadata(kind: str) -> None:
    meta = _native(htype=HTYPES[kind], series="series_7", metadata={"image_id": 3, "shape": [2, 3]})
    msg = decode_data([encode_metadata(meta), b"12345"])
    assert (msg.kind, msg.series, msg.metadata["metadata"]) == (kind, "series_7", {"image_id": 3, "shape": [2, 3]})


def test_a_legacy_message_is_a_file() -> None:
    meta = _native()
    del meta["htype"]
    assert decode_data([encode_metadata(meta), b"12345"]).kind == "file"


@pytest.mark.parametrize("key", ["filesize", "chunksize", "chunk_number", "filename"])
def test_missing_required_field(key: str) -> None:
    meta = json.loads(LEGACY_META)
    del meta[key]
    with pytest.raises(ProtocolError, match=repr(key)):
        decode_data([json.dumps(meta).encode(), b"12345"])


# --- confirmations ------------------------------------------------------------------------------------------


def test_encode_confirmations_golden() -> None:
    messages = encode_confirmations(b"sender01_4242", "current/raw/f.cbf", 3, "xxh3_64", "fedcba9876543210")
    assert messages[:2] == [[b"sender01_4242", b"current/raw/f.cbf", b"0"],
                            [b"sender01_4242", b"current/raw/f.cbf", b"1"]]
    topic, fid, number, proof = messages[2]
    assert (topic, fid, number) == (b"sender01_4242", b"current/raw/f.cbf", b"2")
    assert json.loads(proof) == {"last_chunk": True, "checksum_algorithm": "xxh3_64",
                                 "file_checksum": "fedcba9876543210"}


def test_confirmation_of_a_single_chunk_file_carries_the_proof() -> None:
    [message] = encode_confirmations(b"t", "f", 1, None, None)
    assert message[:3] == [b"t", b"f", b"0"] and json.loads(message[3])["file_checksum"] is None


@pytest.mark.parametrize(("algorithm", "checksum"), [("xxh3_64", "fedcba9876543210"), (None, None),
                                                    ('odd "name"\n', "é\u2028")])
def test_confirmation_proof_is_the_json_it_always_was(algorithm: str | None, checksum: str | None) -> None:
    for count in (1, 3):
        proof = encode_confirmations(b"t", "f", count, algorithm, checksum)[-1][3]
        assert proof == json.dumps({"last_chunk": True, "checksum_algorithm": algorithm,
                                    "file_checksum": checksum}).encode()


def test_confirmations_round_trip() -> None:
    messages = encode_confirmations(b"t", "scan/ü.tif", 2, "xxh3_64", "abc")
    assert [decode_confirmation(m) for m in messages] == [Confirmation("scan/ü.tif", 0, None),
                                                          Confirmation("scan/ü.tif", 1, "abc")]


def test_legacy_three_frame_confirmation_has_no_checksum() -> None:
    assert decode_confirmation([b"sender01_4242", b"a/b.cbf", b"17"]) == Confirmation("a/b.cbf", 17, None)


@pytest.mark.parametrize("proof", [b"[1]", b"null", b'{"file_checksum": 5}', b'{"last_chunk": true}'])
def test_a_proof_frame_without_a_string_checksum_gives_none(proof: bytes) -> None:
    assert decode_confirmation([b"t", b"f", b"0", proof]).checksum is None


@pytest.mark.parametrize(("frames", "why"), [
    ([b"t", b"f"], "3 or 4 frames, got 2"),  # 4.x senders <= 4.0.7 format: not ours
    ([b"t", b"f", b"0", b"{}", b"x"], "3 or 4 frames, got 5"),
    ([b"t", b"f", b"zero"], "malformed confirmation"),
    ([b"t", b"\xff", b"0"], "malformed confirmation"),
    ([b"t", b"f", b"0", b"{bad"], "malformed confirmation"),
])
def test_malformed_confirmations(frames: list[bytes], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_confirmation(frames)


def test_heartbeat() -> None:
    assert encode_heartbeat("recv01", {"started": 1.5}) == [HEARTBEAT_TOPIC, b"recv01", b'{"started": 1.5}']
    assert HEARTBEAT_TOPIC == b"hidra.receiver.alive"


def test_file_id_of_an_event_is_worked_out_once_not_at_every_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    import hidra_core.types as types_module

    calls: list[tuple[str, str]] = []
    real = types_module.file_id_of
    monkeypatch.setattr(types_module, "file_id_of", lambda rel, name: calls.append((rel, name)) or real(rel, name))
    event = types_module.FileEvent("/src", "run/a", "f.dat")
    assert [event.file_id for _ in range(3)] == ["run/a/f.dat"] * 3
    assert calls == [("run/a", "f.dat")]
