"""The ``eiger_stream`` source against ``hidra-eiger-sim`` as a subprocess: every series arrives as start, frames,
end, with the contract's metadata, and every frame payload decompresses to exactly the frame the simulator made."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from conftest import SHAPE, SIZE, Sim, decode_payload, expected_frame
from hidra_core import FRAME, SERIES_END, SERIES_START, FileEvent
from hidra_core.testing import StreamSourceContract, collect_events
from hidra_eiger.source import EigerStreamConfig, EigerStreamSource

NIMAGES = 50


@pytest.fixture(scope="module")
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def _connect(start_sim: Callable[..., Sim], context: zmq.Context, version: str,
             stream: dict[str, Any]) -> Iterator[tuple[Sim, EigerStreamSource]]:
    sim = start_sim("--api-version", version)
    for name, value in {"mode": "enabled", **stream}.items():
        sim.put("stream", name, value)
    sim.put("detector", "nimages", NIMAGES)
    sim.put("detector", "frame_time", 0.001)
    # NOTE: one source per simulator for the whole module (one client per stream, eiger.md §6)
    source = EigerStreamSource(EigerStreamConfig(endpoint=sim.stream, relative_path="eiger/raw",
                                                 name_pattern="scan_$id"))
    source.open(context)
    yield sim, source
    source.close()


@pytest.fixture(scope="module")
def v1(start_sim: Callable[..., Sim], context: zmq.Context) -> Iterator[tuple[Sim, EigerStreamSource]]:
    yield from _connect(start_sim, context, "1.6.0", {})


@pytest.fixture(scope="module")
def v2(start_sim: Callable[..., Sim], context: zmq.Context) -> Iterator[tuple[Sim, EigerStreamSource]]:
    yield from _connect(start_sim, context, "1.8.0", {"format": "cbor"})


def _take_series(sim: Sim, source: EigerStreamSource, settings: dict[str, Any]) -> tuple[int, list[FileEvent]]:
    for (module, name), value in settings.items():
        sim.put(module, name, value)
    series = sim.command("arm")["sequence id"]
    sim.command("trigger")
    return series, collect_events(source, [f"eiger/raw/scan_{series}.end"], timeout_s=30)


def _check_frames(frames: list[FileEvent], series: int, channels: list[str], bits: int, endpoint: str) -> None:
    several = len(channels) > 1
    names = [f"scan_{series}_{i:06d}" + (f"_{c}" if several else "") for i in range(NIMAGES) for c in channels]
    assert [e.filename for e in frames] == names
    for event in frames:
        meta = event.metadata
        index, channel = meta["image_id"], meta["channel_index"]
        assert (meta["series_id"], meta["channel"], meta["shape"], meta["dtype"], meta["element_size"]) == (
            series, channels[channel], list(SHAPE), f"<u{bits // 8}", bits // 8)
        assert event.size == len(event.payload) and event.series == f"scan_{series}"
        assert event.source_path == endpoint and event.relative_path == "eiger/raw"
        assert json.loads(json.dumps(dict(meta))) == dict(meta)  # JSON-able
        np.testing.assert_array_equal(decode_payload(event.payload, meta), expected_frame(index, bits, channel))
    assert len({e.version for e in frames}) == len(frames)


def _check_end(end: FileEvent, series: int, frames: int) -> None:
    assert (end.kind, end.filename, end.relative_path, end.payload) == (SERIES_END, f"scan_{series}.end",
                                                                         "eiger/raw", b"")
    assert {k: end.metadata[k] for k in ("series_id", "frames", "missing", "aborted")} == {
        "series_id": series, "frames": frames, "missing": 0, "aborted": False}


def _check_blobs(start: FileEvent) -> None:
    offset = 0
    for blob in start.metadata["blobs"]:
        assert blob["offset"] == offset
        data = np.frombuffer(bytes(start.payload[offset:offset + blob["size"]]), blob["dtype"])
        assert data.size == int(np.prod(blob["shape"]))
        offset += blob["size"]
    assert offset == len(start.payload)


@pytest.mark.parametrize("detail", ["all", "basic", "none"])
@pytest.mark.parametrize(("compression", "bits", "bs_header", "encoding", "framed"), [
    ("none", 16, False, "<", False), ("lz4", 16, False, "lz4<", False),
    ("bslz4", 16, False, "bs16-lz4<", False), ("bslz4", 16, True, "bs16-lz4<", True),
    ("bslz4", 32, False, "bs32-lz4<", False), ("bslz4", 32, True, "bs32-lz4<", True),
])
def test_v1_series_from_the_simulator_arrives_whole_and_frames_decode_exactly(
        v1: tuple[Sim, EigerStreamSource], detail: str, compression: str, bits: int, bs_header: bool,
        encoding: str, framed: bool) -> None:
    sim, source = v1
    series, events = _take_series(sim, source, {
        ("stream", "header_detail"): detail, ("simulator", "bitshuffle_header"): bs_header,
        ("detector", "compression"): compression, ("detector", "bit_depth_image"): bits})
    start, *frames, end = events
    assert [e.kind for e in events] == [SERIES_START, *[FRAME] * NIMAGES, SERIES_END]
    meta = start.metadata
    assert (start.filename, start.relative_path, meta["format"], meta["series_id"], meta["header_detail"]) == (
        f"scan_{series}.start", "eiger/raw", "v1", series, detail)
    assert (meta["channels"], meta["series_unique_id"]) == (["data"], None)
    assert meta["config"].get("nimages") == (NIMAGES if detail != "none" else None)
    assert [b["name"] for b in meta["blobs"]] == (
        ["flatfield", "pixel_mask", "countrate_table"] if detail == "all" else [])
    _check_blobs(start)
    _check_frames(frames, series, ["data"], bits, sim.stream)
    assert {(e.metadata["encoding"], e.metadata["compression"], e.metadata["hdf5_framed"]) for e in frames} == {
        (encoding, compression, framed)}
    assert all(len(e.metadata["md5"]) == 32 and e.metadata["start_time"] == e.metadata["image_id"] * 1_000_000
               for e in frames)
    _check_end(end, series, NIMAGES)


@pytest.mark.parametrize(("channels", "compression", "bits"), [
    (1, "bslz4", 16), (2, "bslz4", 32), (2, "lz4", 16), (1, "none", 16)])
def test_v2_series_from_the_simulator_has_one_frame_per_channel_that_decodes_exactly(
        v2: tuple[Sim, EigerStreamSource], channels: int, compression: str, bits: int) -> None:
    sim, source = v2
    series, events = _take_series(sim, source, {
        ("stream", "header_detail"): "all", ("detector", "compression"): compression,
        ("detector", "bit_depth_image"): bits,
        ("detector", "threshold/2/mode"): "enabled" if channels == 2 else "disabled"})
    names = ["threshold_1", "threshold_2"][:channels]
    start, *frames, end = events
    assert [e.kind for e in events] == [SERIES_START, *[FRAME] * (NIMAGES * channels), SERIES_END]
    meta = start.metadata
    assert (meta["format"], meta["series_id"], meta["channels"], meta["header_detail"]) == (
        "v2", series, names, "all")
    assert meta["series_unique_id"] and meta["config"]["number_of_images"] == NIMAGES
    assert (meta["config"]["image_size_x"], meta["config"]["image_size_y"]) == SIZE
    assert {b["name"] for b in meta["blobs"]} == {"countrate_correction_lookup_table",
                                                  *(f"{k}/{c}" for k in ("flatfield", "pixel_mask") for c in names)}
    _check_blobs(start)
    _check_frames(frames, series, names, bits, sim.stream)
    assert all(e.metadata["series_unique_id"] == meta["series_unique_id"] for e in frames)
    assert all(e.metadata["hdf5_framed"] == (compression != "none") for e in frames)
    _check_end(end, series, NIMAGES * channels)


class TestEigerStreamContract(StreamSourceContract):
    """The stream-source rules against the simulator (Stream V1; one simulator per test: one client per stream)."""

    driver_name = "eiger_stream"

    @pytest.fixture(autouse=True)
    def _sim(self, start_sim: Callable[..., Sim]) -> None:
        self.sim = start_sim("--api-version", "1.6.0")
        self.sim.put("stream", "mode", "enabled")
        self.sim.put("detector", "nimages", self.frames)
        self.sim.put("detector", "frame_time", 0.001)

    def make_config(self, tmp_path: Any) -> dict[str, Any]:
        return {"endpoint": self.sim.stream}

    def produce_series(self, tmp_path: Any, frames: int) -> None:
        self.sim.command("arm")
        self.sim.command("trigger")
