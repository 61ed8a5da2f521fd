"""The Stream V1 / V2 decoders on golden messages built with the simulator's own encoders (no sockets)."""
from __future__ import annotations

import json
from typing import Any

import cbor2
import numpy as np
import pytest

from conftest import SHAPE, SIZE, decode_payload, expected_frame, golden_series
from hidra_eiger import cbor_tags, cbor_view
from hidra_eiger.messages import DecodeError, End, Header, Image
from hidra_eiger.sim import stream_v1, stream_v2
from hidra_eiger.source import decode_message


@pytest.mark.parametrize(("compression", "bits", "bs_header", "encoding", "framed"), [
    ("none", 16, False, "<", False), ("lz4", 16, False, "lz4<", False), ("lz4", 32, False, "lz4<", False),
    ("bslz4", 16, False, "bs16-lz4<", False), ("bslz4", 16, True, "bs16-lz4<", True),
    ("bslz4", 32, False, "bs32-lz4<", False), ("bslz4", 32, True, "bs32-lz4<", True),
])
def test_v1_image_keeps_the_blob_and_says_how_it_is_encoded(compression: str, bits: int, bs_header: bool,
                                                             encoding: str, framed: bool) -> None:
    series = golden_series(compression=compression, bits=bits, bs_header=bs_header, image_appendix='{"a": 1}')
    parts = stream_v1.image_parts(series, 3)
    msg = decode_message([memoryview(p) for p in parts])
    assert isinstance(msg, Image) and (msg.series_id, msg.image_id, msg.user_data) == (1, 3, {"a": 1})
    (frame,) = msg.frames
    assert frame.payload.obj is parts[2]  # the very buffer received, not a copy
    assert (frame.channel, frame.shape, frame.dtype, frame.compression, frame.hdf5_framed, frame.encoding) == (
        "data", list(SHAPE), f"<u{bits // 8}", compression, framed, encoding)
    assert msg.times == {"start_time": 6_000_000, "stop_time": 6_000_000 + 9_900_000, "real_time": 9_900_000}
    meta = {"shape": frame.shape, "dtype": frame.dtype, "compression": compression, "hdf5_framed": framed}
    np.testing.assert_array_equal(decode_payload(frame.payload, meta), expected_frame(3, bits))


@pytest.mark.parametrize("detail", ["all", "basic", "none"])
def test_v1_header_has_config_and_tables_at_its_detail(detail: str) -> None:
    series = golden_series(detail=detail, header_appendix='{"sample": "lysozyme"}')
    msg = decode_message(stream_v1.header_parts(series))
    assert isinstance(msg, Header) and (msg.format, msg.series_id, msg.unique_id) == ("v1", 1, None)
    assert (msg.header_detail, msg.channels, msg.user_data) == (detail, ["data"], {"sample": "lysozyme"})
    assert (msg.config.get("x_pixels_in_detector"), msg.config.get("nimages")) == (
        (SIZE[0], 8) if detail != "none" else (None, None))
    tables = [(b.name, b.dtype, b.shape, len(b.data)) for b in msg.blobs]
    assert tables == ([("flatfield", "<f4", list(SHAPE), SHAPE[0] * SHAPE[1] * 4),
                       ("pixel_mask", "<u4", list(SHAPE), SHAPE[0] * SHAPE[1] * 4),
                       ("countrate_table", "<f4", [2, 1000], 8000)] if detail == "all" else [])


def test_v1_flatfield_part_named_without_the_d_prefix_is_still_a_table() -> None:
    parts = stream_v1.header_parts(golden_series(detail="all"))
    parts[2] = parts[2].replace(b"dflatfield-1.0", b"flatfield-1.0")
    msg = decode_message(parts)
    assert isinstance(msg, Header) and [b.name for b in msg.blobs][0] == "flatfield" and msg.user_data is None


def test_v1_end() -> None:
    assert decode_message(stream_v1.end_parts(golden_series(series_id=7))) == End(7, None)


@pytest.mark.parametrize(("compression", "bits", "channels"), [
    ("bslz4", 16, 1), ("bslz4", 32, 2), ("lz4", 16, 2), ("none", 16, 1)])
def test_v2_image_has_one_frame_per_channel_as_compressed_by_the_detector(compression: str, bits: int,
                                                                           channels: int) -> None:
    series = golden_series("cbor", compression=compression, bits=bits, channels=channels)
    msg = decode_message([stream_v2.image_message(series, 2)])
    assert isinstance(msg, Image) and (msg.series_id, msg.image_id) == (1, 2)
    assert msg.unique_id == f"{0xC0FFEE:016x}-1"
    assert [f.channel for f in msg.frames] == ["threshold_1", "threshold_2"][:channels]
    assert msg.times["start_time"] == [4_000_000, 1_000_000_000]  # a Rational stays [num, den]
    for index, frame in enumerate(msg.frames):
        assert (frame.shape, frame.dtype, frame.compression) == (list(SHAPE), f"<u{bits // 8}", compression)
        assert frame.hdf5_framed == (compression != "none")
        assert frame.encoding == (f"cbor-56500-{compression}" if compression != "none" else f"cbor-{68 + bits // 16}")
        meta = {"shape": frame.shape, "dtype": frame.dtype, "compression": compression,
                "hdf5_framed": frame.hdf5_framed}
        np.testing.assert_array_equal(decode_payload(frame.payload, meta), expected_frame(2, bits, index))


@pytest.mark.parametrize("detail", ["all", "basic"])
def test_v2_start_puts_scalars_in_config_and_arrays_in_blobs(detail: str) -> None:
    series = golden_series("cbor", detail=detail, channels=2, header_appendix="beamtime 42")
    msg = decode_message([stream_v2.start_message(series)])
    assert isinstance(msg, Header) and (msg.format, msg.series_id, msg.header_detail) == ("v2", 1, detail)
    assert msg.channels == ["threshold_1", "threshold_2"] and msg.user_data == "beamtime 42"
    assert msg.config["image_size_x"] == SIZE[0] and msg.config["goniometer"]["omega"]["increment"] == 0.1
    assert isinstance(msg.config["arm_date"], str) and msg.config["arm_date"].startswith("20")  # ISO text
    json.dumps(msg.config)  # JSON-able throughout
    names = [(b.name, b.dtype, b.shape) for b in msg.blobs]
    assert names == ([("countrate_correction_lookup_table", "<u4", [1000]),
                      ("flatfield/threshold_1", "<f4", list(SHAPE)), ("flatfield/threshold_2", "<f4", list(SHAPE)),
                      ("pixel_mask/threshold_1", "<u4", list(SHAPE)), ("pixel_mask/threshold_2", "<u4", list(SHAPE))]
                     if detail == "all" else [])


def test_v2_end() -> None:
    series = golden_series("cbor", series_id=4)
    assert decode_message([stream_v2.end_message(series)]) == End(4, f"{0xC0FFEE:016x}-4")


def _plain(value: Any) -> Any:
    """cbor_view's output in cbor2's terms, to compare the two readers."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, cbor_tags.MultiDimArray):
        return cbor2.CBORTag(40 if value.row_major else 1040, [value.dims, _plain(value.contents)])
    if isinstance(value, cbor_tags.TypedArray):
        return cbor2.CBORTag(value.tag, _plain(value.data))
    if isinstance(value, cbor_tags.Compressed):
        return cbor2.CBORTag(56500, [value.algorithm, value.element_size, _plain(value.data)])
    return value


@pytest.mark.parametrize("value", [
    0, 23, 24, 255, 65536, 2**40, -1, -500, 1.5, 3.25e-7, float("inf"), True, False, None, "", "é" * 300,
    b"", b"x" * 70_000, [], [1, [2, [3]]], {"a": {"b": [1.0, None]}}, {1: "int key"},
    cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(86, b"\0" * 32)]), cbor2.CBORTag(999, "unknown tag"),
])
def test_cbor_view_reads_what_cbor2_writes(value: Any) -> None:
    assert _plain(cbor_view.loads(cbor2.dumps(value))) == _lists(cbor2.loads(cbor2.dumps(value)))


def _lists(value: Any) -> Any:
    """cbor2 6 decodes arrays inside tags as tuples, cbor2 5 as lists."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, _lists(value.value))
    return value


def test_cbor_view_reads_indefinite_lengths_and_half_floats() -> None:
    # RFC 8949 appendix A examples: (_ h'0102', h'030405'), (_ "strea", "ming"), [_ 1, [2, 3]], {_ "a": 1}, 1.5
    assert cbor_view.loads(bytes.fromhex("5f42010243030405ff")) == b"\x01\x02\x03\x04\x05"
    assert cbor_view.loads(bytes.fromhex("7f657374726561646d696e67ff")) == "streaming"
    assert cbor_view.loads(bytes.fromhex("9f018202039f0405ffff")) == [1, [2, 3], [4, 5]]
    assert cbor_view.loads(bytes.fromhex("bf61610161629f0203ffff")) == {"a": 1, "b": [2, 3]}
    assert cbor_view.loads(bytes.fromhex("f93e00")) == 1.5


@pytest.mark.parametrize(("data", "says"), [
    (b"\x5a\x00\x00\x10\x00abc", "truncated"), (b"\x82\x01", "truncated"), (b"\x01\x02", "1 bytes after"),
    (b"\xff", "break code"), (b"\x1c", "reserved"), (b"\x81" * 100_000 + b"\x00", "deeply nested"),
])
def test_cbor_view_refuses_broken_cbor_naming_the_problem(data: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        cbor_view.loads(data)


def test_v2_image_payload_is_a_slice_of_the_received_message_not_a_copy() -> None:
    series = golden_series("cbor", compression="bslz4")
    message = stream_v2.image_message(series, 0)
    msg = decode_message([memoryview(message)])
    assert isinstance(msg, Image) and msg.frames[0].payload.obj is message
    assert bytes(msg.frames[0].payload) == series.encode(0, 0)


@pytest.mark.parametrize(("parts", "kind", "says"), [
    ([b'{"htype": "dimage-1.0", "series": 1, "frame": 0, "hash": ""}', b"{}"], "malformed", "truncated"),
    ([b'{"htype": "dimage-1.0", "series": 1'], "malformed", "not JSON"),
    ([b'{"htype": "dimage-1.0", "series": 1, "frame": 0, "hash": ""}',
      b'{"htype": "dimage_d-1.0", "shape": [4, 2], "type": "uint16", "encoding": "zstd<", "size": 3}', b"abc"],
     "unknown_encoding", "zstd<"),
    ([b'{"htype": "dimage-1.0", "series": 1, "frame": 0, "hash": ""}',
      b'{"htype": "dimage_d-1.0", "shape": [4, 2], "type": "uint16", "encoding": "<", "size": 99}', b"abc"],
     "malformed", "3 bytes"),
    ([b'{"htype": "dimagination-9.9"}'], "unknown_htype", "dimagination-9.9"),
    ([b"[1, 2]"], "malformed", "nor valid Stream V2 CBOR"),
    ([cbor2.dumps([1, 2])], "malformed", "list, not a map"),
    ([cbor2.dumps({"series_id": 1})], "malformed", "unknown type None"),
    ([cbor2.dumps({"type": "pulse", "series_id": 1})], "malformed", "unknown type 'pulse'"),
    ([cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0, "data": {"t": [1, 2]}})], "malformed", "tag 40"),
    ([cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0, "data": {"t": cbor2.CBORTag(
        40, [[1, 1], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["zstd", 2, b"x"]))])}})], "unknown_encoding", "zstd"),
    ([b"\xa1"], "malformed", "nor valid Stream V2 CBOR"),
    ([b"\x00", b"\x01"], "malformed", "2-part message"),
])
def test_broken_message_is_refused_with_its_kind_and_a_clear_reason(parts: list[bytes], kind: str,
                                                                    says: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(parts)
    assert info.value.kind == kind and says in str(info.value)
