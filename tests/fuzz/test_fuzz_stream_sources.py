"""The sources that connect to a detector stream (``eiger_stream``, ``bsread``) fed 10,000 malformed messages over a
real PUSH/PULL pair: ``poll`` never raises, the messages are counted as refused, and a good series or pulse sent
after the barrage still comes through."""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable, Iterator

import pytest
import zmq

from hidra_core import FRAME, PULSE, SERIES_END, EventSource, FileEvent
from hidra_core.testing import poll_until
from hidra_databuffer.bsread_source import BsreadConfig, BsreadSource
from hidra_eiger.sim import stream_v1, stream_v2
from hidra_eiger.source import EigerStreamConfig, EigerStreamSource
from socket_fuzzer import Mutator

pytestmark = pytest.mark.slow

MESSAGES = int(os.environ.get("HIDRA_FUZZ_MESSAGES", "10000"))


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _barrage(context: zmq.Context, make: Callable[[str], EventSource], messages: list[list[bytes]],
             good: list[list[bytes]], done: Callable[[list[FileEvent]], bool]) -> tuple[EventSource, list[FileEvent]]:
    """Send ``messages`` then ``good`` to a source connected to a PUSH socket; the events once ``done``."""
    push = context.socket(zmq.PUSH)
    push.linger = 0
    source = make(f"tcp://127.0.0.1:{push.bind_to_random_port('tcp://127.0.0.1')}")
    source.open(context)
    try:
        for msg in [*messages, *good]:
            while True:
                try:
                    push.send_multipart(msg, zmq.NOBLOCK, copy=False)
                    break
                except zmq.Again:
                    source.poll(10)  # NOTE: the source reads (and drops what it refuses) as the queue fills
        return source, poll_until(source, done, 30)
    finally:
        source.close()
        push.close()


def _series(fmt: str, series_id: int) -> Any:
    from hidra_eiger.sim.detector import _detector_config
    from hidra_eiger.sim.frames import FrameGenerator
    from hidra_eiger.sim.series import Series

    cfg = _detector_config((8, 4), fmt == "cbor").values()
    cfg.update(compression="lz4", bit_depth_image=16, nimages=3, frame_time=0.002)
    return Series(series_id, 0xC0FFEE + series_id, fmt, "basic", cfg, "", "", False, ["threshold_1"],
                  FrameGenerator((4, 8), "uint16", 0))


def _messages(stream: Any, series: Any) -> list[list[bytes]]:
    if stream is stream_v2:
        return [[stream_v2.start_message(series)], *([stream_v2.image_message(series, i)] for i in range(3)),
                [stream_v2.end_message(series)]]
    return [stream.header_parts(series), *(stream.image_parts(series, i) for i in range(3)), stream.end_parts(series)]


@pytest.mark.parametrize("fmt, stream", [("legacy", stream_v1), ("cbor", stream_v2)])
def test_eiger_stream_source_survives_malformed_messages_and_the_next_series_goes_through(context, fmt, stream):
    hostile = list(Mutator(_messages(stream, _series(fmt, 1))).messages(MESSAGES))
    good = _messages(stream, _series(fmt, 99))

    def done(events: list[FileEvent]) -> bool:
        return any(e.kind == SERIES_END and e.series == "series_99" for e in events)

    source, events = _barrage(context, lambda endpoint: EigerStreamSource(EigerStreamConfig(endpoint=endpoint)),
                              hostile, good, done)
    frames = [e for e in events if e.kind == FRAME and e.series == "series_99"]
    assert [e.metadata["image_id"] for e in frames] == [0, 1, 2]
    assert source.stats["malformed"] > MESSAGES // 4


def _bsread(pulse_id: int, value: float) -> list[bytes]:
    channels = [{"name": "X:VALUE", "type": "float64", "shape": [1]}]
    data_header = json.dumps({"htype": "bsr_d-1.0", "channels": channels}).encode()
    main = json.dumps({"htype": "bsr_m-1.0", "pulse_id": pulse_id, "global_timestamp": {"sec": 1, "ns": 2},
                       "hash": "h1", "dh_compression": None}).encode()
    return [main, data_header, struct.pack("<d", value), struct.pack("<qq", 1, 2)]


def test_bsread_source_survives_malformed_messages_and_the_next_pulse_goes_through(context):
    hostile = list(Mutator([_bsread(n, 1.5) for n in range(1, 4)]).messages(MESSAGES))

    def done(events: list[FileEvent]) -> bool:
        return any(e.kind == PULSE and e.metadata.get("pulse_id") == 10**9 for e in events)

    source, events = _barrage(context, lambda endpoint: BsreadSource(BsreadConfig(address=endpoint)), hostile,
                              [_bsread(10**9, 2.5)], done)
    assert source.stats["malformed"] > MESSAGES // 4
    last = next(e for e in events if e.metadata.get("pulse_id") == 10**9)
    assert bytes(last.payload) == struct.pack("<d", 2.5)
