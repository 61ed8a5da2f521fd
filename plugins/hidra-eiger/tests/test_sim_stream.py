"""Stream V1 and V2 of hidra-eiger-sim: every frame decodes, with an independent decoder, to the generated one."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import bitshuffle
import cbor2
import hdf5plugin
import lz4.block
import numpy as np
import pytest
import zmq

from conftest import SIZE, Sim, hdf5_decode
from hidra_eiger.sim.frames import FrameGenerator

NIMAGES = 3
SHAPE = (SIZE[1], SIZE[0])  # numpy order (y, x)
BS_BLOCK_BYTES = 8192  # bitshuffle's default block, as the simulator states it in the 12-byte header


def _expected(index: int, bits: int, channel: int = 0) -> np.ndarray:
    return FrameGenerator(SHAPE, f"uint{bits}", seed=0).frame(index, channel)


def _configure(sim: Sim, settings: dict[str, dict[str, Any]]) -> None:
    for module, params in settings.items():
        for name, value in params.items():
            sim.put(module, name, value)


def _series(sim: Sim, sock: zmq.Socket) -> tuple[int, list[list[bytes]]]:
    series = sim.command("arm")["sequence id"]
    sim.command("trigger")
    return series, [sock.recv_multipart() for _ in range(NIMAGES + 2)]


@pytest.fixture(scope="module")
def v1(start_sim: Callable[..., Sim], pull: Callable[[Sim], zmq.Socket]) -> tuple[Sim, zmq.Socket]:
    sim = start_sim("--api-version", "1.6.0")
    _configure(sim, {"stream": {"mode": "enabled"}, "detector": {"nimages": NIMAGES, "frame_time": 0.002}})
    return sim, pull(sim)


def _decode_v1(blob: bytes, encoding: str, bits: int) -> np.ndarray:
    dtype = f"<u{bits // 8}"
    nbytes = SHAPE[0] * SHAPE[1] * bits // 8
    if encoding == "<":
        return np.frombuffer(blob, dtype=dtype).reshape(SHAPE)
    if encoding == "lz4<":
        return np.frombuffer(lz4.block.decompress(blob, uncompressed_size=nbytes), dtype=dtype).reshape(SHAPE)
    assert encoding == f"bs{bits}-lz4<"
    # eiger.md §4: the 12-byte header is there when the first 8 bytes equal the expected byte count
    if int.from_bytes(blob[:8], "big") != nbytes:
        blob = nbytes.to_bytes(8, "big") + BS_BLOCK_BYTES.to_bytes(4, "big") + blob
    return hdf5_decode(blob, SHAPE, dtype, hdf5plugin.Bitshuffle(cname="lz4"))


def _check_header(parts: list[bytes], series: int, detail: str) -> None:
    assert json.loads(parts[0]) == {"htype": "dheader-1.0", "series": series, "header_detail": detail}
    if detail == "none":
        assert len(parts) == 1
        return
    config = json.loads(parts[1])
    assert (config["x_pixels_in_detector"], config["y_pixels_in_detector"], config["nimages"]) == (*SIZE, NIMAGES)
    if detail == "basic":
        assert len(parts) == 2
        return
    assert [json.loads(parts[i])["htype"] for i in (2, 4, 6)] == [
        "dflatfield-1.0", "dpixelmask-1.0", "dcountrate_table-1.0"]
    flat, mask = json.loads(parts[2]), json.loads(parts[4])
    assert flat["shape"] == mask["shape"] == list(SIZE) and len(parts) == 8
    assert len(parts[3]) == SIZE[0] * SIZE[1] * 4 and len(parts[5]) == SIZE[0] * SIZE[1] * 4


@pytest.mark.parametrize("detail", ["all", "basic", "none"])
@pytest.mark.parametrize(("compression", "bits", "bs_header", "encoding"), [
    ("none", 16, False, "<"), ("lz4", 16, False, "lz4<"), ("lz4", 32, False, "lz4<"),
    ("bslz4", 16, False, "bs16-lz4<"), ("bslz4", 16, True, "bs16-lz4<"),
    ("bslz4", 32, False, "bs32-lz4<"), ("bslz4", 32, True, "bs32-lz4<"),
])
def test_v1_series_frames_decode_to_the_generated_frames(v1: tuple[Sim, zmq.Socket], detail: str,
                                                         compression: str, bits: int, bs_header: bool,
                                                         encoding: str) -> None:
    sim, sock = v1
    _configure(sim, {"stream": {"header_detail": detail}, "simulator": {"bitshuffle_header": bs_header},
                     "detector": {"compression": compression, "bit_depth_image": bits}})
    series, msgs = _series(sim, sock)
    _check_header(msgs[0], series, detail)
    for index, parts in enumerate(msgs[1:-1]):
        head, desc, blob, dconfig = (json.loads(parts[0]), json.loads(parts[1]), parts[2], json.loads(parts[3]))
        assert head == {"htype": "dimage-1.0", "series": series, "frame": index,
                        "hash": hashlib.md5(blob).hexdigest()}
        assert desc == {"htype": "dimage_d-1.0", "shape": list(SIZE), "type": f"uint{bits}",
                        "encoding": encoding, "size": len(blob)}
        if compression == "bslz4":  # the header is there exactly when asked for
            assert (int.from_bytes(blob[:8], "big") == blob_bytes(bits)) == bs_header
        if compression != "none":
            assert len(blob) < blob_bytes(bits)  # really compressed
        frame = _decode_v1(blob, encoding, bits)
        np.testing.assert_array_equal(frame, _expected(index, bits))
        assert dconfig["htype"] == "dconfig-1.0"
        assert dconfig["start_time"] == index * 2_000_000  # frame_time 0.002 s
    assert json.loads(msgs[-1][0]) == {"htype": "dseries_end-1.0", "series": series}


def blob_bytes(bits: int) -> int:
    return SHAPE[0] * SHAPE[1] * bits // 8


def test_generated_frames_look_like_diffraction_not_zeros() -> None:
    frames = [_expected(i, 16) for i in range(3)]
    assert all(f.max() > 50 and f.min() >= 0 and len(np.unique(f)) > 20 for f in frames)
    assert not np.array_equal(frames[0], frames[1])  # noise differs per frame
    y, x = SHAPE
    assert frames[0][y // 2, x // 2] > frames[0][0, 0]  # brighter near the beam centre


def test_v1_appendices_are_the_last_parts(v1: tuple[Sim, zmq.Socket]) -> None:
    sim, sock = v1
    _configure(sim, {"stream": {"header_detail": "basic", "header_appendix": '{"sample": "lysozyme"}',
                                "image_appendix": "img-app"}, "detector": {"compression": "lz4"}})
    try:
        _series_id, msgs = _series(sim, sock)
    finally:
        _configure(sim, {"stream": {"header_appendix": "", "image_appendix": ""}})
    assert len(msgs[0]) == 3 and json.loads(msgs[0][2]) == {"sample": "lysozyme"}
    assert all(len(m) == 5 and m[4] == b"img-app" for m in msgs[1:-1])


@pytest.fixture(scope="module")
def v2(start_sim: Callable[..., Sim], pull: Callable[[Sim], zmq.Socket]) -> tuple[Sim, zmq.Socket]:
    sim = start_sim("--api-version", "1.8.0")
    _configure(sim, {"stream": {"mode": "enabled", "format": "cbor"},
                     "detector": {"nimages": NIMAGES, "frame_time": 0.002}})
    return sim, pull(sim)


def _decode_v2(tagged: Any, bits: int, compression: str) -> np.ndarray:
    assert isinstance(tagged, cbor2.CBORTag) and tagged.tag == 40
    dims, typed = tagged.value
    assert list(dims) == list(SHAPE)  # slowest first: a numpy shape
    assert typed.tag == {16: 69, 32: 70}[bits]  # little-endian uint16 / uint32 typed array
    dtype = f"<u{bits // 8}"
    if compression == "none":
        return np.frombuffer(typed.value, dtype=dtype).reshape(SHAPE)
    assert typed.value.tag == 56500
    algorithm, modifier, payload = typed.value.value
    assert (algorithm, modifier) == (compression, bits // 8 if compression == "bslz4" else 0)
    assert len(payload) < blob_bytes(bits)
    filter_ = hdf5plugin.Bitshuffle(cname="lz4") if compression == "bslz4" else hdf5plugin.LZ4()
    return hdf5_decode(payload, SHAPE, dtype, filter_)


@pytest.mark.parametrize("detail", ["all", "none"])
@pytest.mark.parametrize(("compression", "bits", "channels"), [
    ("bslz4", 16, 1), ("bslz4", 32, 2), ("lz4", 16, 2), ("lz4", 32, 1), ("none", 16, 2),
])
def test_v2_series_has_dectris_tags_and_frames_decode(v2: tuple[Sim, zmq.Socket], detail: str, compression: str,
                                                      bits: int, channels: int) -> None:
    sim, sock = v2
    _configure(sim, {"stream": {"header_detail": detail}, "detector": {
        "compression": compression, "bit_depth_image": bits,
        "threshold/2/mode": "enabled" if channels == 2 else "disabled"}})
    series, msgs = _series(sim, sock)
    assert all(len(m) == 1 for m in msgs)  # one ZeroMQ frame per message
    start, *images, end = (cbor2.loads(m[0]) for m in msgs)
    assert list(start)[0] == "type" and start["type"] == "start" and start["series_id"] == series
    names = ["threshold_1", "threshold_2"][:channels]
    assert list(start["channels"]) == names and list(start["threshold_energy"]) == names
    assert (start["image_size_x"], start["image_size_y"], start["image_dtype"]) == (*SIZE, f"uint{bits}")
    assert start["number_of_images"] == NIMAGES and isinstance(start["arm_date"], datetime)
    assert ("pixel_mask" in start, "flatfield" in start) == (detail == "all", detail == "all")
    if detail == "all":
        assert start["pixel_mask"]["threshold_1"].tag == 40
    for index, image in enumerate(images):
        assert list(image)[0] == "type" and image["type"] == "image"
        assert (image["image_id"], image["series_id"]) == (index, series)
        assert image["series_unique_id"] == start["series_unique_id"]
        assert list(image["start_time"]) == [index * 2_000_000, 1_000_000_000]  # Rational
        assert list(image["data"]) == names
        for channel, name in enumerate(names):
            frame = _decode_v2(image["data"][name], bits, compression)
            np.testing.assert_array_equal(frame, _expected(index, bits, channel))
    assert end == {"type": "end", "series_id": series, "series_unique_id": start["series_unique_id"]}


def test_flux_scales_the_photons_per_pixel_and_so_the_compressed_size() -> None:
    bright, faint = (FrameGenerator(SHAPE, "uint16", seed=0, flux=f).frame(0) for f in (1.0, 0.01))
    assert 0.005 < faint.mean() / bright.mean() < 0.02
    assert 0 < len(bitshuffle.compress_lz4(faint)) < len(bitshuffle.compress_lz4(bright))
