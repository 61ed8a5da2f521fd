"""The ingest wire format (``hidra_core.ingest``), version 1: golden headers, and what the decoder refuses."""
from __future__ import annotations

import pytest

from hidra_core import ProtocolError, ingest


def test_headers_are_compact_versioned_json() -> None:
    assert ingest.encode("create", file=1, name="run1/a.raw", producer="daq-1") == (
        b'{"v":1,"op":"create","file":1,"name":"run1/a.raw","producer":"daq-1"}')
    assert ingest.encode("ack", upto=7) == b'{"v":1,"op":"ack","upto":7}'


def test_decode_keeps_the_data_frame_as_it_is() -> None:
    data = memoryview(b"payload")
    msg = ingest.decode([ingest.encode("write", file=3, offset=10), data])
    assert (msg.op, msg.file, msg.fields["offset"]) == ("write", 3, 10)
    assert msg.data is data


@pytest.mark.parametrize("frames, problem", [
    ([], "empty message"),
    ([b"[1, 2]"], "header is not a JSON object"),
    ([b'{"v": 2, "op": "ack", "upto": 1}'], "unsupported version 2 (this side speaks 1)"),
    ([b'{"v": 1, "op": "ack", "upto": "1"}'], "ack: 'upto' must be a non-negative integer, got '1'"),
    ([b'{"v": 1, "op": "ack", "upto": true}'], "ack: 'upto' must be a non-negative integer, got True"),
    ([b'{"v": 1, "op": "create", "file": 1, "name": 5, "producer": "p"}'], "create: 'name' must be a string"),
    ([b'{"v": 1, "op": "ping"}', b"extra"], "ping: takes 0 data frame(s), got 1"),
])
def test_decode_names_what_is_wrong(frames: list[bytes], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ingest.decode(frames)


@pytest.mark.parametrize("name, problem", [("a/../b", "'..'"), ("/abs", "absolute"), ("a//b", "empty"),
                                           ("dir/", "empty"), ("a\x00b", "forbidden characters")])
def test_names_are_checked_like_every_received_name(name: str, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        ingest.split_name(name)


def test_a_plain_nested_name_splits_into_directory_and_file() -> None:
    assert ingest.split_name("run1/scan 2/img_0001.raw") == ("run1/scan 2", "img_0001.raw")
    assert ingest.split_name("img.raw") == ("", "img.raw")
