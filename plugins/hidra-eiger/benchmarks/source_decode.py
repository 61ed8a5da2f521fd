"""How many frames/s ``EigerStreamSource.poll`` takes in, for EIGER 4M frames (2068 x 2162 uint16, bslz4).

A thread plays the DCU over TCP loopback with the simulator's own (pre-compressed, cached) messages; the main
thread polls the source until the series ends. Both share one process and its GIL, so the figure is a lower
bound of the source's own rate. Usage: ``.venv/bin/python plugins/hidra-eiger/benchmarks/source_decode.py [N]``.
"""
from __future__ import annotations

import json
import sys
import threading
import time

import zmq

from hidra_eiger.sim.detector import _detector_config
from hidra_eiger.sim.frames import FrameGenerator
from hidra_eiger.sim.series import Series
from hidra_eiger.sim.streamer import _message
from hidra_eiger.source import EigerStreamConfig, EigerStreamSource

SIZE = (2068, 2162)  # x, y: EIGER 4M


def _series(fmt: str) -> Series:
    cfg = _detector_config(SIZE, True).values()
    cfg.update(compression="bslz4", bit_depth_image=16)
    series = Series(1, 1, fmt, "basic", cfg, "", "", True, ["threshold_1"],
                    FrameGenerator((SIZE[1], SIZE[0]), "uint16", 0))
    series.warm()  # NOTE: compress the 16 distinct frames up front; the feeder then only frames them
    return series


def _renumber(cached: list[list[bytes]], fmt: str, i: int) -> list[bytes]:
    """Message of image ``i``: V1 from the cached one of the same content, with only its first part renumbered.

    # NOTE: making a V1 message anew costs the feeder an MD5 of 2.8 MiB; V2 is encoded anew (a CBOR dump)
    """
    if fmt == "cbor":
        return _message("image", series_of[fmt], i)
    parts = cached[i % len(cached)]
    head = json.loads(parts[0])
    return [json.dumps({**head, "frame": i}).encode(), *parts[1:]]


series_of: dict[str, Series] = {}


def measure(fmt: str, n: int) -> None:
    series = series_of[fmt] = _series(fmt)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    source = EigerStreamSource(EigerStreamConfig(endpoint=f"tcp://127.0.0.1:{port}"))
    source.open(ctx)

    cached = [_message("image", series, i) for i in range(series.generator.distinct)]

    def feed() -> None:
        push.send_multipart(_message("header", series))
        for i in range(n):
            push.send_multipart(_renumber(cached, fmt, i), copy=False)
        push.send_multipart(_message("end", series))

    thread = threading.Thread(target=feed)
    thread.start()
    frames = nbytes = 0
    t0 = time.perf_counter()
    cpu0 = time.thread_time()  # NOTE: the polling thread's own CPU, not the feeder's
    ended = False
    while not ended:
        for event in source.poll(1000):
            frames += event.kind == "frame"
            nbytes += event.size or 0
            ended = ended or event.kind == "series_end"
    dt, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    thread.join()
    print(f"{fmt:6}: {frames} frames in {dt:.2f} s: {frames / dt:,.0f} frames/s, {nbytes / dt / 2**20:,.0f} MiB/s, "
          f"{nbytes / frames / 2**20:.2f} MiB/frame, poll thread CPU {cpu / frames * 1e3:.2f} ms/frame "
          f"(= {frames / cpu:,.0f} frames per CPU second), missing {source.stats['missing']}")
    source.close()
    push.close()
    ctx.term()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for stream_format in ("legacy", "cbor"):
        measure(stream_format, count)
