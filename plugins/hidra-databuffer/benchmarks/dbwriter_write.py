"""Writing a pulse range to HDF5 (issue 8 benchmark): the writer's path against h5py writing the same arrays.

Channels: four scalars (float64, float32, int32, uint16) and one 512×512 uint16 image, every pulse, no gap.

* ``h5py``: the arrays already in memory as numpy, written to contiguous datasets (the ceiling).
* ``writer``: ``write_layout`` (the writer's HDF5 step, compact layout) from the parsed §8 response as
  ``query.decode_body`` leaves it (long numeric lists as int64 arrays); image events share a few value objects so
  10,000 images fit in RAM. ``writer, lists``: the same with the image values as Python lists (plain ``json``).
* ``http``: the whole request over a fake data API (query, JSON parse, write) on a shorter range.
* ``buffer``: end to end through the REAL buffer: a ``Store`` filled in-process (the pulses share one payload of
  8 frames, so 10,000 images fit in RAM), served by ``query_api.QueryServer`` with its default query limits, and
  ``write_file`` querying it (split into sub-queries; binary answer in this process and in a writer process of
  its own, as deployed, timed inside it; then the JSON answer on ``--json-pulses``).

Run: ``.venv/bin/python plugins/hidra-databuffer/benchmarks/dbwriter_write.py [--pulses 10000] [--http-pulses 100]
[--json-pulses 300] [--repeat 1] [--dir DIR]``
Files go to ``--dir`` (default /dev/shm, else the temp dir) and are removed after each stage.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hidra_databuffer._decode import ChannelConfig
from hidra_databuffer.dbwriter.fakeapi import FakeDataApi, SampleChannel, global_date
from hidra_databuffer.dbwriter.layout import write_layout
from hidra_databuffer.dbwriter.query import SplitLimits
from hidra_databuffer.dbwriter.request import WriteRequest
from hidra_databuffer.dbwriter.service import WriterOptions, write_file
from hidra_databuffer.query_api import QueryLimits, QueryServer, build_app
from hidra_databuffer.store import Event, Pulse, Store
from hidra_databuffer.store_writer import DatabufferConfig

SCALARS = {"BENCH:F64": ("float64", lambda p: p / 3), "BENCH:F32": ("float32", lambda p: p * 0.5),
           "BENCH:I32": ("int32", lambda p: -p), "BENCH:U16": ("uint16", lambda p: p % 65536)}
IMAGE = "BENCH:IMAGE"
SIDE = 512
_FRAMES = [((np.arange(SIDE * SIDE, dtype=np.uint32) * 7 + k) % 65536).astype(np.uint16) for k in range(8)]
PARAMS = {"general/created": "now", "general/user": "bench", "general/process": "bench",
          "general/instrument": "bench"}


def _response(first: int, n: int, as_lists: bool) -> list[dict[str, Any]]:
    lists = [frame.tolist() if as_lists else frame.astype(np.int64) for frame in _FRAMES]
    pulses = range(first, first + n)
    entries = [{"channel": {"name": name, "backend": "sf-databuffer"}, "configs": [{"type": kind, "shape": [1]}],
                "data": [{"pulseId": p, "globalDate": global_date(p), "value": fn(p), "shape": [1]}
                         for p in pulses]} for name, (kind, fn) in SCALARS.items()]
    entries.append({"channel": {"name": IMAGE, "backend": "sf-databuffer"},
                    "configs": [{"type": "uint16", "shape": [SIDE, SIDE]}],
                    "data": [{"pulseId": p, "globalDate": global_date(p), "value": lists[p % 8],
                              "shape": [SIDE, SIDE]} for p in pulses]})
    return entries


def _h5py_baseline(path: Path, first: int, n: int) -> float:
    pulses = np.arange(first, first + n, dtype=np.int64)
    dates = np.array([global_date(int(p)) for p in pulses], dtype=object)
    started = time.perf_counter()
    with h5py.File(path, "w") as h5:
        for key, value in PARAMS.items():
            h5.create_dataset(key, data=np.bytes_(value.encode()))
        for name, (kind, fn) in SCALARS.items():
            group = h5.create_group(f"data/{name}")
            group.create_dataset("data", data=np.asarray([fn(int(p)) for p in pulses], dtype=kind).reshape(n, 1))
            _index(group, pulses, dates)
        group = h5.create_group(f"data/{IMAGE}")
        dset = group.create_dataset("data", shape=(n, SIDE, SIDE), dtype="u2")
        block = np.stack([_FRAMES[int(p) % 8] for p in range(first, first + 64)]).reshape(64, SIDE, SIDE)
        for start in range(0, n, 64):  # NOTE: 8 frames cycle, so one 64-frame block holds the right values
            dset[start:start + min(64, n - start)] = block[:min(64, n - start)]
        _index(group, pulses, dates)
    return time.perf_counter() - started


def _index(group: h5py.Group, pulses: np.ndarray[Any, Any], dates: np.ndarray[Any, Any]) -> None:
    group.create_dataset("pulse_id", data=pulses)
    group.create_dataset("is_data_present", data=np.ones(len(pulses), dtype=bool))
    group.create_dataset("global_date", data=dates, dtype=h5py.string_dtype())


def _writer(path: Path, first: int, n: int, as_lists: bool = False) -> float:
    response = _response(first, n, as_lists)
    started = time.perf_counter()
    with h5py.File(path, "w") as h5:
        write_layout(h5, response, PARAMS)
    return time.perf_counter() - started


def _request(names: list[str], first: int, n: int, path: Path) -> tuple[dict[str, Any], WriteRequest]:
    query = {"channels": [{"name": name, "backend": "sf-databuffer"} for name in names],
             "range": {"startPulseId": first, "endPulseId": first + n - 1},
             "response": {"format": "json", "compression": "none"},
             "eventFields": ["channel", "pulseId", "value", "shape", "globalDate"], "configFields": ["type", "shape"]}
    return query, WriteRequest(json.dumps(query), json.dumps({**PARAMS, "output_file": str(path)}), time.time())


def _http(directory: Path, first: int, n: int) -> tuple[float, int]:
    samples = [SampleChannel(name, kind, [1], lambda p: True, fn) for name, (kind, fn) in SCALARS.items()]
    samples.append(SampleChannel(IMAGE, "uint16", [SIDE, SIDE], lambda p: True, lambda p: _FRAMES[p % 8]))
    path = directory / "http.h5"
    query, request = _request([s.name for s in samples], first, n, path)
    with FakeDataApi(samples) as api:
        api.respond(query)  # NOTE: warm the fake's JSON cache so the figure is the writer's, not the fake's
        started = time.perf_counter()
        write_file(request, WriterOptions(data_api_url=api.url))
        elapsed = time.perf_counter() - started
    size = path.stat().st_size
    path.unlink()
    return elapsed, size


def _store(first: int, n: int) -> Store:
    """The benchmark's pulses in a real ``Store``: every pulse's payload is one shared blob (the 8 frames, then
    each pulse's four scalars), so only the events differ."""
    configs = [ChannelConfig(kind, (1,), "little", "none") for kind, _ in SCALARS.values()]
    image = ChannelConfig("uint16", (SIDE, SIDE), "little", "none")
    frame_bytes = SIDE * SIDE * 2
    row = struct.Struct("<dfiH")
    base = 8 * frame_bytes
    blob = b"".join(f.tobytes() for f in _FRAMES) + b"".join(
        row.pack(*(fn(p) for _, fn in SCALARS.values())) for p in range(first, first + n))
    offsets = [0, 8, 12, 16]
    store = Store(max_pulses=n + 1, max_bytes=1 << 62)
    pulses = []
    for i, p in enumerate(range(first, first + n)):
        events: dict[str, Event | None] = {name: Event(c, base + i * row.size + off, c.spec.dtype.itemsize)
                                           for name, c, off in zip(SCALARS, configs, offsets)}
        events[IMAGE] = Event(image, (p % 8) * frame_bytes, frame_bytes)
        pulses.append(Pulse(p, 1_700_000_000 + p // 100, (p % 100) * 10_000_000, blob, events))
    store.append(pulses)
    return store


# NOTE: the writer as deployed, a process of its own (no GIL shared with the buffer); timed inside the child
_CHILD = """import sys, time
from hidra_databuffer.dbwriter.query import SplitLimits
from hidra_databuffer.dbwriter.request import WriteRequest
from hidra_databuffer.dbwriter.service import WriterOptions, write_file
request = WriteRequest(sys.argv[2], sys.argv[3], time.time())
started = time.perf_counter()
write_file(request, WriterOptions(data_api_url=sys.argv[1], split=SplitLimits(binary=sys.argv[4] == "1")))
print(time.perf_counter() - started)
"""


def _buffer(directory: Path, server: QueryServer, first: int, n: int, binary: bool, separate: bool) -> float:
    path = directory / "buffer.h5"
    _, request = _request([*SCALARS, IMAGE], first, n, path)
    url = f"{server.url}/query"
    if separate:
        out = subprocess.run([sys.executable, "-c", _CHILD, url, request.data_api_request, request.parameters,
                              "1" if binary else "0"], check=True, capture_output=True, text=True).stdout
        elapsed = float(out.split()[-1])
    else:
        started = time.perf_counter()
        write_file(request, WriterOptions(data_api_url=url, split=SplitLimits(binary=binary)))
        elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


def _end_to_end(directory: Path, first: int, pulses: int, json_pulses: int,
                repeat: int = 1) -> list[tuple[str, int, float]]:
    """(label, pulses, seconds) through the real buffer's query API; the h5py figure of each count in the same
    run. With ``repeat``, h5py and the writer alternate that many times and each keeps its best (other load on
    the machine only ever slows a try down)."""
    defaults = DatabufferConfig()
    store = _store(first, pulses)
    limits = QueryLimits(0.0, defaults.max_query_pulses, defaults.max_query_bytes, False)
    server = QueryServer(build_app(store, limits), "127.0.0.1", 0)
    server.start()
    rows = []
    try:
        for label, n, binary, separate in (("binary", pulses, True, False),
                                           ("binary, own process", pulses, True, True),
                                           ("JSON", json_pulses, False, False)):
            if not n:
                continue
            base, ours = [], []
            for _ in range(repeat if binary else 1):
                base.append(_h5py_baseline(directory / "base.h5", first, n))
                (directory / "base.h5").unlink()
                ours.append(_buffer(directory, server, first, n, binary, separate))
            rows += [(f"h5py from memory ({n})", n, min(base)), (f"buffer -> writer, {label}", n, min(ours))]
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pulses", type=int, default=10000)
    parser.add_argument("--http-pulses", type=int, default=100)
    parser.add_argument("--json-pulses", type=int, default=300, help="pulses of the JSON end-to-end stage")
    parser.add_argument("--lists", action="store_true", help="also time image values given as Python lists")
    parser.add_argument("--repeat", type=int, default=1, help="tries of each binary stage (best kept)")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm") if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        first = 1_000_000
        mib = args.pulses * (SIDE * SIDE * 2 + 4 * 8) / 2**20
        rows = []
        stages = [("h5py from memory", _h5py_baseline), ("writer layout", _writer),
                  ("writer, lists", lambda path, first, n: _writer(path, first, n, True))]
        for label, run in stages[:3 if args.lists else 2]:
            path = directory / f"{label[:9].replace(' ', '_')}.h5"
            seconds = run(path, first, args.pulses)
            rows.append((label, seconds, path.stat().st_size))
            path.unlink()
        http_s, http_size = _http(directory, first, args.http_pulses)
        e2e = _end_to_end(directory, first, args.pulses, args.json_pulses, args.repeat)
    print(f"{args.pulses} pulses, 4 scalars + {SIDE}x{SIDE} uint16 image, {mib:.0f} MiB of values, dir {args.dir}")
    for label, seconds, size in rows:
        print(f"  {label:18s} {seconds:7.2f} s  {mib / seconds:8.1f} MiB/s  file {size / 2**20:.0f} MiB")
    print(f"  writer / h5py      {rows[0][1] / rows[1][1]:.2f} of the h5py rate")
    http_mib = args.http_pulses * (SIDE * SIDE * 2 + 32) / 2**20
    print(f"  http end to end    {http_s:7.2f} s  {http_mib / http_s:8.1f} MiB/s  ({args.http_pulses} pulses: "
          f"query, JSON parse, write; file {http_size / 2**20:.0f} MiB)")

    print("  end to end through the buffer's query API (ratio: of the h5py rate for the same pulses):")
    for label, n, seconds in e2e:
        mib_n = n * (SIDE * SIDE * 2 + 18) / 2**20
        ratio = "" if label.startswith("h5py") else f"  {e2e[e2e.index((label, n, seconds)) - 1][2] / seconds:.2f}"
        print(f"    {label:38s} {n:6d} pulses {seconds:7.2f} s  {mib_n / seconds:8.1f} MiB/s{ratio}")


if __name__ == "__main__":
    main()
