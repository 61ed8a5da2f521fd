"""CBF images per second through the ``pilatus`` source (header read with fabio) against the plain ``inotify``
source, on the same files in the same run.

Two measurements per data set, each source in turn on the same directory (a tmpfs, as a camserver's ramdisk):
- scan: N images already there; files/s of the start-up scan until every image was reported;
- live: a writer thread writes the N images (in place, as camserver does) while the source polls in this thread;
  CPU time of the polling thread per image (µs), which is what the header parsing adds to the sender.

    .venv/bin/python benchmarks/pilatus.py [--images 2000] [--big 100] [--repeats 3] [--dir /dev/shm]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from typing import Any

from hidra_core import create_driver
from hidra_pilatus.sim import camserver_header, image_bytes

SETS = {"100K (195x487)": (195, 487), "6M (2527x2463)": (2527, 2463)}


def _source(kind: str, path: str, scan: bool) -> Any:
    options: dict[str, Any] = {"path": path}
    if kind == "inotify":
        options["scan_at_start"] = scan
    else:
        options["watch"] = {"type": "inotify", "inotify": {"scan_at_start": scan}}
    source = create_driver("event source", kind, options, "<benchmark>", f"sender.source.{kind}")
    source.open(None)
    return source


def _drain(source: Any, count: int) -> int:
    seen: set[str] = set()
    errors = 0
    while len(seen) < count:
        for event in source.poll(50):
            if event.filename.endswith(".cbf"):
                seen.add(event.file_id)
                errors += "metadata_error" in event.metadata
    return errors


def scan_rate(kind: str, path: str, count: int) -> float:
    source = _source(kind, path, scan=True)
    try:
        start = time.perf_counter()
        errors = _drain(source, count)
        elapsed = time.perf_counter() - start
    finally:
        source.close()
    assert errors == 0, f"{errors} metadata errors"
    return count / elapsed


def live_cpu_us(kind: str, path: str, data: bytes, count: int) -> float:
    """Source-thread CPU µs per image while a writer thread writes ``count`` images into ``path``."""
    source = _source(kind, path, scan=False)

    def camserver() -> None:
        for n in range(count):
            with open(os.path.join(path, f"live_{n:05d}.cbf"), "wb") as f:
                f.write(data)

    writer = threading.Thread(target=camserver)
    try:
        cpu = time.thread_time()
        writer.start()
        errors = _drain(source, count)
        cpu = time.thread_time() - cpu
    finally:
        writer.join()
        source.close()
    assert errors == 0, f"{errors} metadata errors"
    return cpu / count * 1e6


def run(base: str, shape: tuple[int, int], count: int, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    data = image_bytes(camserver_header(), shape)
    out: dict[str, tuple[list[float], list[float]]] = {"inotify": ([], []), "pilatus": ([], [])}
    for _ in range(repeats):
        for kind in ("inotify", "pilatus"):
            directory = tempfile.mkdtemp(prefix="pilatus-bench-", dir=base)
            try:
                for n in range(count):
                    with open(os.path.join(directory, f"img_{n:05d}.cbf"), "wb") as f:
                        f.write(data)
                out[kind][0].append(scan_rate(kind, directory, count))
                shutil.rmtree(directory)
                os.mkdir(directory)
                out[kind][1].append(live_cpu_us(kind, directory, data, count))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="images of the small set (default 2000)")
    p.add_argument("--big", type=int, default=100, help="images of the 6M set (6 MB each; default 100)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    args = p.parse_args()
    print(f"{'set':<16} {'images':>6} {'source':<8} {'scan files/s':>13} {'live CPU µs/image':>18}")
    for (name, shape), count in zip(SETS.items(), (args.images, args.big)):
        figures = run(args.dir, shape, count, args.repeats)
        for kind, (rates, cpus) in figures.items():
            print(f"{name:<16} {count:>6} {kind:<8} {statistics.median(rates):>13,.0f}"
                  f" {statistics.median(cpus):>18,.0f}")
    print(f"(median of {args.repeats}; scan: start-up scan of images already written; live: the polling thread's"
          " CPU per image while another thread writes them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
