"""``values.decode_value`` on its own: frames made by the real bsread package's own serialisers, for every type,
byte order and compression, decode to exactly the value; frames that cannot hold a value are refused by name."""
from __future__ import annotations

import struct
from typing import Any

import lz4.block
import numpy as np
import pytest
from bsread.data.helpers import get_value_bytes, get_value_reader

from hidra_databuffer.values import TYPES, ChannelSpec, decode_pulse, decode_value

NUMERIC = [t for t in TYPES if t != "string"]
COMPRESSIONS = ["none", "lz4", "bitshuffle_lz4"]


def _sent(type_name: str, encoding: str, shape: tuple[int, ...]) -> np.ndarray:
    order = "<" if encoding == "little" else ">"
    count = int(np.prod(shape))
    if type_name == "bool":
        return (np.arange(count) % 3 == 0).reshape(shape)
    info = np.iinfo(TYPES[type_name]) if type_name[0] in "iu" else None
    base = np.arange(count) - count // 2 if info is None or info.min < 0 else np.arange(count)
    values = base.astype(TYPES[type_name])
    if info is not None:  # NOTE: the extremes of the type too, where byte order and sign matter most
        values.flat[0], values.flat[-1] = info.min, info.max
    elif count > 1:
        values.flat[0] = np.finfo(TYPES[type_name]).max
    return values.astype(order + TYPES[type_name]).reshape(shape)


@pytest.mark.parametrize("shape", [(1,), (7,), (5, 3), (2, 3, 4)], ids=["scalar", "waveform", "image", "cube"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("encoding", ["little", "big"])
@pytest.mark.parametrize("type_name", NUMERIC)
def test_every_numeric_type_decodes_to_the_value_sent(type_name: str, encoding: str, compression: str,
                                                      shape: tuple[int, ...]) -> None:
    sent = _sent(type_name, encoding, shape)
    channel = {"name": "X", "type": type_name, "shape": list(shape[::-1]), "encoding": encoding,
               "compression": compression}
    got = decode_value(channel, get_value_bytes(sent, compression, channel_type=type_name))
    if shape == (1,):
        assert isinstance(got, np.generic) and got.dtype == np.dtype(TYPES[type_name]) and got == sent[0]
    else:
        assert isinstance(got, np.ndarray) and got.shape == shape  # numpy shape = bsread shape reversed
        assert got.dtype == np.dtype(TYPES[type_name]) and got.dtype.isnative
        assert np.array_equal(got, sent)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("text", ["a", "pulse 17: héllo wörld ✓", "x" * 70_000])
def test_strings_decode_to_str(compression: str, text: str) -> None:
    frame = get_value_bytes(text, compression, channel_type="string")
    assert decode_value({"name": "S", "type": "string", "compression": compression}, frame) == text


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_defaults_are_float64_scalar_little_endian(compression: str) -> None:
    assert ChannelSpec.from_entry({"name": "D"}) == ChannelSpec("D", "float64", (1,), "little", "none")
    frame = get_value_bytes(2.5, compression, channel_type="float64")
    assert decode_value({"name": "D", "compression": compression}, frame) == 2.5


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_empty_frame_is_none(compression: str) -> None:
    assert decode_value({"name": "E", "type": "uint16", "shape": [4], "compression": compression}, b"") is None


@pytest.mark.parametrize("compression", ["none", "bitshuffle_lz4"])
@pytest.mark.parametrize("type_name", NUMERIC)
def test_agrees_with_the_bsread_receiver(type_name: str, compression: str) -> None:
    sent = _sent(type_name, "big", (3, 4))
    frame = get_value_bytes(sent, compression, channel_type=type_name)
    theirs = get_value_reader(type_name, compression, [4, 3], ">")(frame)
    ours = decode_value({"name": "X", "type": type_name, "shape": [4, 3], "encoding": "big",
                         "compression": compression}, frame)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("prefix", ["<I", ">I"], ids=["python-sender", "java-sender"])
def test_lz4_size_prefix_of_a_big_endian_channel_is_read_either_way(prefix: str) -> None:
    sent = np.arange(6, dtype=">i4")
    frame = struct.pack(prefix, sent.nbytes) + lz4.block.compress(sent.tobytes(), store_size=False)
    got = decode_value({"name": "J", "type": "int32", "shape": [6], "encoding": "big", "compression": "lz4"}, frame)
    assert got.tolist() == list(range(6))


def _lz4(data: bytes, size: int | None = None) -> bytes:
    return struct.pack("<I", len(data) if size is None else size) + lz4.block.compress(data, store_size=False)


@pytest.mark.parametrize(("channel", "frame", "says"), [
    ({"type": "float64"}, b"\x00" * 7, "holds 7 uncompressed bytes; float64 of shape [1] needs 8"),
    ({"type": "uint16", "shape": [4, 3]}, b"\x00" * 26, "holds 26"),
    ({"type": "int32", "compression": "lz4"}, _lz4(b"\x00" * 8), "states 8 uncompressed bytes"),
    ({"type": "int32", "compression": "lz4"}, b"\x04\x00\x00", "too short for a lz4 frame"),
    ({"type": "int32", "compression": "lz4"}, _lz4(b"\x00" * 4)[:4] + b"\xff\xff\xff", "does not decompress"),
    ({"type": "uint8", "shape": [3], "compression": "bitshuffle_lz4"},
     get_value_bytes(np.arange(4, dtype=np.uint8), "bitshuffle_lz4", "uint8"), "states 4"),
    ({"type": "uint16", "shape": [4], "compression": "bitshuffle_lz4"}, b"\x00" * 12, "too short"),
    ({"type": "uint16", "shape": [4], "compression": "bitshuffle_lz4"},
     struct.pack(">qi", 8, 3) + b"\x00" * 8, "block size 3 is not a multiple of the item size 2"),
    ({"type": "float128"}, b"\x00" * 16, "type 'float128' is not one of"),
    ({"type": "int8", "shape": [0]}, b"", "shape [0] is not a list of positive integers"),
    ({"type": "int8", "shape": 3}, b"\x00" * 3, "shape 3 is not a list"),
    ({"encoding": "middle"}, b"\x00" * 8, "encoding 'middle' is not one of little, big"),
    ({"compression": "zstd"}, b"\x00" * 8, "compression 'zstd' is not one of none, lz4, bitshuffle_lz4"),
])
def test_frame_that_cannot_hold_the_value_is_refused_naming_the_channel(channel: dict[str, Any], frame: bytes,
                                                                         says: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_value({"name": "BAD:CH", **channel}, frame)
    assert "'BAD:CH'" in str(info.value) and says in str(info.value)


def test_decode_pulse_reads_each_present_channel_from_its_slice() -> None:
    image = np.arange(6, dtype=np.uint16).reshape(2, 3)
    frames = [get_value_bytes(1.25, "none", "float64"), get_value_bytes(image, "bitshuffle_lz4", "uint16"),
              get_value_bytes("ok", "lz4", "string")]
    entries, offset = [], 0
    for (name, type_name, shape, compression), frame in zip(
            [("F", "float64", [1], "none"), ("I", "uint16", [3, 2], "bitshuffle_lz4"), ("S", "string", [1], "lz4")],
            frames):
        entries.append({"name": name, "type": type_name, "shape": shape, "encoding": "little",
                        "compression": compression, "present": True, "timestamp": None, "offset": offset,
                        "size": len(frame)})
        offset += len(frame)
    entries.insert(1, {**entries[0], "name": "GONE", "present": False, "size": 0, "offset": entries[1]["offset"]})
    got = decode_pulse({"channels": entries}, memoryview(b"".join(frames)))
    assert got["F"] == 1.25 and got["GONE"] is None and got["S"] == "ok" and np.array_equal(got["I"], image)
