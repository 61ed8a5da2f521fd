"""Client reassembly, integrity checks and signal helpers, without sockets (hidra4-protocol.md §3.3, §3.4, §6)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import xxhash

from hidra_core.client import AuthenticationFailed, ChecksumError, CommunicationFailed, VersionError
from hidra_core.client._assembly import Reassembler
from hidra_core.client._wire import check_reply, fqdn, wire_targets

# NOTE: tests/ on sys.path makes the `legacy` test package (emulator, fake sender) importable from here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from legacy.fakesender import make_messages, metadata_message  # noqa: E402

DATA = bytes(range(256)) * 40  # 10240 bytes


def _feed_all(asm: Reassembler, messages: list[list[bytes]]) -> list[Any]:
    done = [asm.feed(m) for m in messages]
    return [d for d in done if d is not None]


@pytest.mark.parametrize("native", [True, False], ids=["native", "legacy"])
@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 3000, 10240], ids=lambda s: f"size{s}")
def test_reassembles_by_new_fields_or_by_the_4x_rule(size: int, native: bool) -> None:
    data = DATA[:size]
    messages = make_messages("f.cbf", data, 1000, relative_path="raw/scan1", native=native)
    asm = Reassembler()
    done = _feed_all(asm, messages)
    assert len(done) == 1, f"file must complete exactly at its last chunk, got {len(done)}"
    if len(messages) > 1:
        assert asm.feed(messages[-1]) is None  # a late duplicate of a last chunk > 0 starts nothing
    assert done[0].data == data
    assert done[0].metadata["chunk_number"] is None
    assert done[0].metadata["filename"] == "f.cbf"
    assert asm.pending == []


def test_completion_happens_on_the_last_chunk_only() -> None:
    messages = make_messages("f", DATA[:3000], 1000)  # exact multiple: 3 full chunks
    asm = Reassembler()
    assert [asm.feed(m) is None for m in messages] == [True, True, False]


def test_interleaved_files_are_kept_apart() -> None:
    a = make_messages("a.raw", DATA[:2500], 1000)
    b = make_messages("b.raw", DATA[100:3100], 1000, relative_path="sub")
    c = make_messages("a.raw", DATA[5:1505], 1000, relative_path="other")  # same name, other directory
    order = [a[0], b[0], c[0], b[1], a[1], c[1], b[2], a[2]]
    done = _feed_all(Reassembler(), order)
    got = {(d.metadata["relative_path"], d.metadata["filename"]): d.data for d in done}
    assert got == {("sub", "b.raw"): DATA[100:3100], ("other", "a.raw"): DATA[5:1505], ("", "a.raw"): DATA[:2500]}


def _tamper(message: list[bytes], **changes: Any) -> list[bytes]:
    meta = json.loads(message[0])
    meta.update(changes)
    return [json.dumps(meta).encode(), message[1]]


def test_corrupt_chunk_raises_naming_the_file() -> None:
    messages = make_messages("bad.cbf", DATA[:2500], 1000, relative_path="raw")
    messages[1] = [messages[1][0], b"X" + messages[1][1][1:]]
    asm = Reassembler()
    assert asm.feed(messages[0]) is None
    with pytest.raises(ChecksumError, match=r"raw/bad\.cbf.*chunk 1") as info:
        asm.feed(messages[1])
    assert info.value.file_id == "raw/bad.cbf"
    assert asm.pending == []
    assert asm.feed(messages[2]) is None  # the rest of the broken file is not mistaken for a new one


def test_corrupt_file_checksum_and_drop_mode() -> None:
    messages = make_messages("f", DATA[:2500], 1000)
    messages[-1] = _tamper(messages[-1], file_checksum="0" * 16)
    with pytest.raises(ChecksumError, match="file fails its xxh3_64 checksum"):
        _feed_all(Reassembler(), messages)
    asm = Reassembler(drop_corrupt=True)
    assert _feed_all(asm, messages) == []
    assert asm.dropped == 1
    good = make_messages("g", DATA[:10], 1000)
    assert _feed_all(asm, good)[0].data == DATA[:10]  # it keeps working afterwards


def test_size_mismatch_is_an_integrity_error() -> None:
    messages = make_messages("f", DATA[:1500], 1000, native=False)
    messages = [_tamper(m, filesize=1600) for m in messages]
    with pytest.raises(ChecksumError, match="1500 bytes received, filesize says 1600"):
        _feed_all(Reassembler(), messages)


def test_unknown_algorithm_is_not_verified_but_delivered(caplog: pytest.LogCaptureFixture) -> None:
    messages = [_tamper(m, checksum_algorithm="crc99", chunk_checksum="zz") for m in make_messages("f", DATA, 4096)]
    assert _feed_all(Reassembler(), messages)[0].data == DATA
    assert sum("crc99" in r.getMessage() for r in caplog.records) == 1


def test_alive_test_and_short_messages_are_ignored() -> None:
    asm = Reassembler()
    messages = make_messages("f", DATA[:1500], 1000)
    assert asm.feed([b"ALIVE_TEST"]) is None
    assert asm.feed(messages[0]) is None
    assert asm.feed([b"junk"]) is None
    assert asm.feed([b"not json", b"x"]) is None
    assert asm.feed([b"[1, 2]", b"x"]) is None
    assert asm.feed(messages[1]).data == DATA[:1500]
    assert asm.dropped == 3


def test_metadata_only_messages() -> None:
    notice = metadata_message("f.cbf", "raw", filesize=12345)
    done = Reassembler().feed(notice)
    assert done is not None and done.data is None and done.metadata["filename"] == "f.cbf"
    # in the metadata modes every message is a notice, whatever its payload
    assert Reassembler(metadata_only=True).feed(make_messages("f", DATA, 1000)[0]).data is None
    # a 4-byte file that happens to contain b"null" is data, not a notice
    assert Reassembler().feed(make_messages("n", b"null", 1000)[0]).data == b"null"
    assert Reassembler().feed(make_messages("n", b"null", 1000, native=False)[0]).data == b"null"


def test_chunk_order_rules() -> None:
    messages = make_messages("f", DATA[:3500], 1000)
    asm = Reassembler()
    assert asm.feed(messages[2]) is None  # no chunk 0 seen: dropped
    assert asm.pending == []
    for message in (messages[0], messages[1], messages[1]):  # a repeated chunk is ignored
        assert asm.feed(message) is None
    assert asm.feed(messages[0]) is None  # restart: the sender sent the file again
    done = _feed_all(asm, messages[1:])
    assert done[0].data == DATA[:3500]
    asm.feed(messages[0])
    assert asm.feed(messages[2]) is None  # gap: the file is dropped
    assert asm.pending == []


def test_unknown_htype_is_dropped() -> None:
    message = _tamper(make_messages("f", b"abc", 10)[0], htype="hidra-file-9.0")
    asm = Reassembler()
    assert asm.feed(message) is None and asm.dropped == 1


def test_stale_partials_are_dropped() -> None:
    asm = Reassembler(stale_after_s=0.0)
    first = make_messages("a", DATA[:1500], 1000)
    asm.feed(first[0])
    asm.feed(make_messages("b", DATA[:1500], 1000)[0])  # a new file prunes the stale one
    assert asm.pending == ["b"]


def test_checksums_match_the_wire_algorithm() -> None:
    meta = json.loads(make_messages("f", DATA[:10], 1000)[0][0])
    assert meta["chunk_checksum"] == meta["file_checksum"] == xxhash.xxh3_64(DATA[:10]).hexdigest()


# -- targets and replies --------------------------------------------------------------------------------------


def test_wire_targets_forms() -> None:
    me = fqdn("localhost")
    assert wire_targets(["localhost", 50100, 1]) == [[f"{me}:50100", 1, ".*"]]
    assert wire_targets([["localhost", "50100", 0, r".*\.cbf$"], ["localhost", 50101, 2, [".cbf", ".tif"]]]) == [
        [f"{me}:50100", 0, r".*\.cbf$"], [f"{me}:50101", 2, r".*(\.cbf|\.tif)$"]]
    assert wire_targets([("localhost", 1, 0, [""])]) == [[f"{me}:1", 0, ".*"]]


@pytest.mark.parametrize("bad", [
    [], ["localhost", 50100], ["localhost", 0, 1], ["localhost", "x", 1], ["localhost", 5, -1],
    ["localhost", 5, True], ["a:b", 5, 1], ["localhost", 5, 1, "("], ["localhost", 5, 1, []], ["localhost", 5, 1, 7],
])
def test_wire_targets_refuses_malformed_targets(bad: list[Any]) -> None:
    with pytest.raises(ValueError):
        wire_targets(bad)


@pytest.mark.parametrize(("reply", "error"), [
    ([b"VERSION_CONFLICT", b"5.0.0"], VersionError),
    ([b"NO_VALID_HOST"], AuthenticationFailed),
    ([b"NO_VALID_SIGNAL"], CommunicationFailed),
    ([b"STORING_DISABLED", b"4.4.3"], CommunicationFailed),
    ([b"CONNECTION_ALREADY_OPEN"], CommunicationFailed),
    ([b"START_STREAM_METADATA"], CommunicationFailed),  # no start-of-reply leniency in our client
    ([], CommunicationFailed),
])
def test_error_replies_map_to_exceptions(reply: list[bytes], error: type[Exception]) -> None:
    with pytest.raises(error):
        check_reply("START_STREAM", reply)
    check_reply("START_STREAM", [b"START_STREAM"])


def test_version_error_carries_the_server_version() -> None:
    with pytest.raises(VersionError) as info:
        check_reply("GET_VERSION", [b"VERSION_CONFLICT", b"5.1.0"])
    assert info.value.server_version == "5.1.0"
