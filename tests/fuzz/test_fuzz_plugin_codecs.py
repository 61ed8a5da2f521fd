"""Property tests of the plugins' stream decoders (bsread, EIGER Stream V1/V2, the ingest reassembly): any input is
a decoded message or the decoder's own error, never an exception that would stop the source."""
from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_strategies import DEEP_JSON, FUZZ, frames, hostile_bytes, json_frame, json_values, names
from hidra_core import ingest
from hidra_databuffer.bsread_decode import Decoder, DecodeError as BsreadError, Pulse
from hidra_databuffer.values import decode_value
from hidra_eiger import cbor_view
from hidra_eiger.messages import DecodeError as EigerError
from hidra_eiger.source import decode_message
from hidra_ingest.assembly import Assembler

# -- bsread --------------------------------------------------------------------------------------------------------

bs_types = st.sampled_from(["int8", "uint16", "float64", "bool", "string", "complex", "UINT8"]) | json_values
channel = st.fixed_dictionaries({"name": names | json_values}, optional={
    "type": bs_types, "shape": st.lists(st.integers(-1, 4), max_size=3) | json_values,
    "encoding": st.sampled_from(["little", "big", "middle"]) | json_values,
    "compression": st.sampled_from(["none", "lz4", "bitshuffle_lz4", "zip"]) | json_values})
main_header = st.fixed_dictionaries({"htype": st.sampled_from(["bsr_m-1.1", "bsr_m-1.0", "x"]) | json_values},
                                    optional={"pulse_id": st.integers(-1, 2**70) | json_values,
                                              "global_timestamp": st.fixed_dictionaries(
                                                  {}, optional={"sec": st.integers(-1, 2**40) | json_values,
                                                                "ns": st.integers(-1, 2**31) | json_values})
                                              | json_values,
                                              "hash": st.text(max_size=8) | json_values,
                                              "dh_compression": st.sampled_from(["none", "lz4", "bad"])
                                              | json_values})
data_header = st.fixed_dictionaries({"htype": st.sampled_from(["bsr_d-1.0", "bsr_d-1.1"]) | json_values,
                                     "channels": st.lists(channel, max_size=3) | json_values})
bsread_messages = st.tuples(json_frame(main_header), json_frame(data_header),
                            st.lists(st.binary(max_size=40) | st.sampled_from([b"\x00" * 16, b"\x00" * 12]),
                                     max_size=6)).map(lambda t: [t[0], t[1], *t[2]])


@FUZZ
@given(bsread_messages | frames())
def test_bsread_decoder_of_arbitrary_messages_is_a_pulse_or_a_decode_error(message):
    try:
        pulse = Decoder().decode([memoryview(f) for f in message])
    except BsreadError as exc:
        assert exc.kind in ("truncated", "main_header", "data_header") and str(exc)
        return
    assert pulse is None or isinstance(pulse, Pulse)


@FUZZ
@given(channel, hostile_bytes())
def test_bsread_value_decoding_of_arbitrary_frames_is_a_value_or_a_value_error(entry, frame):
    try:
        decode_value(entry, frame)
    except ValueError as exc:
        assert str(exc)


@pytest.mark.parametrize("header", DEEP_JSON)
def test_bsread_header_nested_too_deeply_is_a_decode_error(header):
    with pytest.raises(BsreadError) as err:
        Decoder().decode([memoryview(header), memoryview(b"{}")])
    assert err.value.kind == "main_header"


# -- EIGER ---------------------------------------------------------------------------------------------------------

v1_image = st.tuples(
    json_frame(st.fixed_dictionaries({"htype": st.sampled_from(["dimage-1.0", "dheader-1.0", "dseries_end-1.0"])},
                                     optional={"series": st.integers(-1, 9) | json_values,
                                               "frame": st.integers(-1, 9) | json_values,
                                               "header_detail": st.sampled_from(["basic", "all", "none"])})),
    json_frame(st.fixed_dictionaries({"htype": st.just("dimage_d-1.0")}, optional={
        "shape": st.lists(st.integers(-1, 4), max_size=3) | json_values,
        "type": st.sampled_from(["uint16", "float32", "nope"]) | json_values,
        "encoding": st.sampled_from(["<", "lz4<", "bs16-lz4<", "bs7", ""]) | json_values,
        "size": st.integers(0, 64) | json_values})),
    st.binary(max_size=64),
    st.lists(json_frame(st.fixed_dictionaries({"htype": st.sampled_from(["dconfig-1.0", "dflatfield-1.0"])
                                                         | json_values},
                                              optional={"start_time": json_values, "type": json_values,
                                                        "shape": json_values})) | hostile_bytes(), max_size=3),
).map(lambda t: [t[0], t[1], t[2], *t[3]])

cbor_leaves = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats() | st.text(max_size=10)
               | st.binary(max_size=16))
cbor_values = st.recursive(cbor_leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4)
                           | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 40, 69, 1040, 56500, 99]), inner),
                           max_leaves=12)
v2_messages = st.fixed_dictionaries({"type": st.sampled_from(["start", "image", "end", "x"])},
                                    optional={"series_id": st.integers(-1, 9) | cbor_values,
                                              "image_id": st.integers(-1, 9) | cbor_values,
                                              "channels": st.lists(st.text(max_size=4), max_size=2) | cbor_values,
                                              "data": st.dictionaries(st.text(max_size=4), cbor_values, max_size=2)
                                              | cbor_values, "user_data": cbor_values})


def _eiger_decodes_or_fails_cleanly(parts: list[bytes]) -> None:
    try:
        decode_message([memoryview(p) for p in parts])
    except EigerError as exc:
        assert exc.kind in ("malformed", "unknown_encoding", "unknown_htype") and str(exc)


@FUZZ
@given(v1_image | frames())
def test_eiger_v1_decoding_of_arbitrary_messages_is_a_message_or_a_decode_error(parts):
    _eiger_decodes_or_fails_cleanly(parts)


@FUZZ
@given(v2_messages.map(cbor2.dumps) | cbor_values.map(cbor2.dumps) | hostile_bytes())
def test_eiger_v2_decoding_of_arbitrary_cbor_is_a_message_or_a_decode_error(raw):
    _eiger_decodes_or_fails_cleanly([raw])


def _plain(value):
    """cbor2's reading of a value with byte strings as ``bytes`` (cbor_view gives memoryviews)."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=10)
                    | st.binary(max_size=16), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12))
def test_cbor_view_reads_what_cbor2_writes(value):
    assert _plain(cbor_view.loads(cbor2.dumps(value))) == value


@pytest.mark.parametrize("raw", [
    bytes([0xa1, 0xa0, 0x01]),  # {{}: 1}: a map as a map key
    bytes([0xa1, 0x81, 0x80, 0x01]),  # {[[]]: 1}: an array holding an array as a map key
    bytes([0xc1, 0x1b]) + (2**63).to_bytes(8, "big"),  # tag 1 (epoch time) of 2**63 seconds
    bytes([0xc1, 0xfb]) + b"\x7f\xf0\x00\x00\x00\x00\x00\x00",  # tag 1 of +infinity
])
def test_cbor_that_python_cannot_represent_is_a_decode_error(raw):
    with pytest.raises(ValueError):
        cbor_view.loads(raw)
    with pytest.raises(EigerError, match="not a Stream V1 JSON object, nor valid Stream V2 CBOR"):
        decode_message([raw])


@pytest.mark.parametrize("dconfig", [b'{"htype": 5}', b'{"htype": null}', b'{"htype": ["dconfig-1.0"]}'])
def test_eiger_v1_image_whose_config_part_has_no_text_htype_keeps_it_as_the_appendix(dconfig):
    head = json.dumps({"htype": "dimage-1.0", "series": 1, "frame": 0}).encode()
    desc = json.dumps({"htype": "dimage_d-1.0", "shape": [2, 1], "type": "uint8", "encoding": "<"}).encode()
    image = decode_message([head, desc, b"\x01\x02", dconfig])
    assert image.user_data == json.loads(dconfig)


@pytest.mark.parametrize("part", DEEP_JSON)
def test_eiger_v1_parts_nested_too_deeply_are_a_decode_error_or_an_appendix(part):
    with pytest.raises(EigerError, match="first part is not JSON"):
        decode_message([b"{" + part])
    head = json.dumps({"htype": "dheader-1.0", "series": 1, "header_detail": "none"}).encode()
    header = decode_message([head, part, b"x"])
    assert header.series_id == 1


# -- ingest reassembly ---------------------------------------------------------------------------------------------

ingest_ops = st.sampled_from(["create", "write", "close", "abort", "file"])
ingest_messages = st.tuples(ingest_ops, st.integers(0, 4), st.integers(0, 40), names,
                            st.binary(max_size=16)).map(
    lambda t: [ingest.encode(t[0], file=t[1], offset=t[2], size=t[2], name=t[3], producer="p")]
    + ([t[4]] if t[0] in ("write", "file") else []))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([b"a", b"b"]), ingest_messages | frames(3)), max_size=30))
def test_ingest_reassembly_survives_any_message_sequence_and_counts_open_bytes_exactly(messages):
    asm = Assembler("tcp://x", max_file_bytes=64, max_open_files=1, max_open_bytes=48)
    for rid, frames_ in messages:
        event = asm.handle(rid, frames_, 0.0)
        if event is not None:
            assert "/" not in event.filename and not event.relative_path.startswith("/")
        open_sizes = sum(p.open.size for p in asm.producers.values() if p.open is not None)
        assert asm.open_bytes == open_sizes <= 48
        assert all(isinstance(rid, bytes) and header for rid, header in asm.outbox)
