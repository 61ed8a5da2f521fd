"""The ``databuffer`` writer's own cost: CPU per pulse of storing 4 float64 scalars + one 512x512 uint16 image
through open/write/close/commit_each (while the buffer grows, and once it is full and evicts), and the time of a
query of a 10,000-pulse range of the scalars over HTTP.

With ``--disk DIR...`` it measures the disk tier instead: per directory (e.g. /dev/shm and a real disk), the
append rate of that stream with the disk tier on versus off (wall clock, pulses/s and MiB/s of payload), and the
rate of a query of 200 images served from memory versus from disk (hot page cache, and cold after
``posix_fadvise(DONTNEED)``), both as ``Store.select`` + decode and over HTTP.

Run from the repository root: ``.venv/bin/python plugins/hidra-databuffer/benchmarks/bench_store.py``
(``... bench_store.py --disk /dev/shm /tmp``)
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import requests  # noqa: E402
from test_store_query import make_pulse  # noqa: E402

from hidra_databuffer._decode import decode  # noqa: E402

from hidra_core import PULSE, WriteTarget, create_driver  # noqa: E402

Pulses = list[tuple[dict[str, Any], bytes]]


def pulses(n: int, compression: str, start: int = 0, image: bool = True) -> Pulses:
    picture = np.random.default_rng(0).integers(0, 4096, (512, 512), dtype=np.uint16)
    out = []
    for pid in range(start, start + n):
        channels: dict[str, tuple[str, list[int], Any]] = {f"S:{i}": ("float64", [1], pid * 0.1 + i)
                                                           for i in range(4)}
        if image:
            channels["CAM:FPICTURE"] = ("uint16", [512, 512], picture)
        meta, payload = make_pulse(pid, channels, compression=compression)
        meta["global_timestamp"] = [1_700_000_000 + pid // 100, (pid % 100) * 10_000_000]  # 100 Hz
        out.append((meta, payload))
    return out


def drive(writer: Any, batch: Pulses, per_commit: int = 10) -> float:
    """CPU seconds per pulse of what a receiver calls."""
    started = time.process_time()
    for i in range(0, len(batch), per_commit):
        handles = []
        for meta, payload in batch[i:i + per_commit]:
            handle = writer.open(WriteTarget("/unused", (), f"pulse_{meta['pulse_id']}", {"metadata": meta}, PULSE))
            writer.write(handle, memoryview(payload).toreadonly())
            writer.close(handle)
            handles.append(handle)
        writer.commit_each(handles)
    return (time.process_time() - started) / len(batch)


def make(**options: Any) -> Any:
    writer = create_driver("writer", "databuffer", {"http_port": 0, **options}, "<bench>", "receiver.databuffer",
                           target="/tmp")
    writer.start()
    return writer


def _append_rate(batch: Pulses, **options: Any) -> tuple[float, float, float]:
    """(pulses/s, MiB/s of payload) of storing ``batch``, wall clock (best of 3), and the seconds of an ``os.sync``
    after the last."""
    walls = []
    for _ in range(3):
        writer = make(max_bytes=256 << 20, **options)
        started = time.perf_counter()
        drive(writer, batch)
        walls.append(time.perf_counter() - started)
        writer.shutdown()
    wall = min(walls)
    started = time.perf_counter()
    os.sync()
    synced = time.perf_counter() - started
    return len(batch) / wall, sum(len(p) for _, p in batch) / wall / 2**20, synced


def _drop_cache(root: Path) -> None:
    os.sync()
    for path in root.rglob("*.seg"):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def _query_rate(writer: Any, start: int, end: int) -> tuple[float, float]:
    """MiB/s of image values: ``select`` + decode in the process, and a query over HTTP (JSON parse included)."""
    started = time.perf_counter()
    (image,) = writer.store.select(["CAM:FPICTURE"], start, end)
    # NOTE: tobytes: a raw frame decodes to a view, which reads nothing until something touches it
    size = sum(len(decode(ev.config, memoryview(p.blob)[ev.offset:ev.offset + ev.size]).tobytes())
               for p, ev in image.hits)
    local = size / (time.perf_counter() - started) / 2**20
    body = {"channels": ["CAM:FPICTURE"], "range": {"startPulseId": start, "endPulseId": end}}
    started = time.perf_counter()
    (entry,) = requests.post(writer.url, json=body, timeout=300).json()
    assert len(entry["data"]) == end - start + 1
    return local, size / (time.perf_counter() - started) / 2**20


def disk_main(roots: list[str]) -> None:
    batch = pulses(2000, "none")
    for root in roots:
        where = Path(tempfile.mkdtemp(prefix="bench-disk-", dir=root))
        try:
            rate, mib, _ = _append_rate(batch)
            print(f"{root}: append 4 scalars + 512x512 uint16, memory only: {rate:.0f} pulses/s, {mib:.0f} MiB/s")
            disk = {"path": str(where / "a"), "max_bytes": 1 << 30}
            rate, mib, synced = _append_rate(batch, disk=disk)
            print(f"{root}: same with the disk tier: {rate:.0f} pulses/s, {mib:.0f} MiB/s (+ {synced:.1f} s os.sync)")
            memory = make(max_bytes=1 << 30, query_wait_s=0)
            drive(memory, batch[-1000:])
            on_disk = make(max_pulses=10, query_wait_s=0, disk={"path": str(where / "q"), "max_bytes": 1 << 30})
            drive(on_disk, batch[-1000:])
            first = batch[-1000][0]["pulse_id"]
            for label, writer, cold in (("memory", memory, False), ("disk, hot", on_disk, False),
                                        ("disk, cold", on_disk, True)):
                if cold:
                    _drop_cache(where / "q")
                local, http = _query_rate(writer, first, first + 199)
                print(f"{root}: query 200 images from {label}: select+decode {local:.0f} MiB/s, HTTP {http:.0f} MiB/s")
            memory.shutdown()
            on_disk.shutdown()
        finally:
            shutil.rmtree(where, ignore_errors=True)


def main() -> None:
    if sys.argv[1:2] == ["--disk"]:
        disk_main(sys.argv[2:])
        return
    for compression in ("none", "bitshuffle_lz4"):
        writer = make(max_bytes=256 << 20)
        growing = drive(writer, pulses(1000, compression))
        full = drive(writer, pulses(1000, compression, start=1000))
        print(f"store 4 scalars + 512x512 uint16 ({compression}): {growing * 1e6:.0f} us CPU/pulse while the buffer"
              f" grows, {full * 1e6:.0f} us once full and evicting ({writer.store.status()['evictions']} evicted)")
        writer.shutdown()
    writer = make(query_wait_s=0)
    drive(writer, pulses(10_000, "none", image=False), per_commit=100)
    body = {"channels": [{"name": f"S:{i}", "backend": "sf-databuffer"} for i in range(4)],
            "range": {"startPulseId": 0, "endPulseId": 9999},
            "eventFields": ["channel", "pulseId", "value", "shape", "globalDate"], "configFields": ["type", "shape"]}
    times = []
    for _ in range(5):
        started = time.perf_counter()
        reply = requests.post(writer.url, json=body, timeout=60)
        assert [len(entry["data"]) for entry in reply.json()] == [10_000] * 4
        times.append(time.perf_counter() - started)
    median, best = statistics.median(times) * 1000, min(times) * 1000
    print(f"query 10,000 pulses x 4 scalars over HTTP, client JSON parse included: median {median:.0f} ms,"
          f" best {best:.0f} ms, {len(reply.content) / 1e6:.1f} MB")
    writer.shutdown()


if __name__ == "__main__":
    main()
