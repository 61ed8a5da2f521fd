"""The ``hdf5`` writer alone: EIGER 4M frames (2068 x 2162 uint16, bslz4, diffraction-like) through
open/write/close/commit_each, against h5py writing the same compressed chunks from memory without the writer.

    .venv/bin/python benchmarks/hdf5_writer.py [--frames 1000] [--batch 32] [--workdir DIR] [--repeat 3]

Rows (median of --repeat runs, each into a new file in --workdir, which must be on the file system to measure):
``writer fsync`` (one commit_each per batch = flush + fsync, in the same thread), ``writer fsync thr`` (the same
with commit_each in a commit thread, as the receiver drives it), ``writer thr V2`` (the same with frames that
come HDF5-framed, as Stream V2 sends them: nothing to prepend), ``writer no-fsync`` (fsync: false), ``h5py
swmr+fsync`` (h5py direct chunk writes in SWMR mode, flush + fsync per batch, the floor under the writer), ``h5py
plain`` (direct chunk writes, one flush at the end). The frames are made and compressed (headerless
bitshuffle-LZ4, as Stream V1 sends it, unless said otherwise) before the clock starts; MiB/s counts compressed
bytes. On a shared VM disk the figures vary several-fold between runs: the range column says how much.
"""
from __future__ import annotations

import argparse
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import h5py
import hdf5plugin
from hidra_eiger.sim.compress import bslz4, bslz4_hdf5
from hidra_eiger.sim.frames import FrameGenerator

from hidra_core import FRAME, SERIES_END, SERIES_START, WriteTarget
from hidra_hdf5.writer import Hdf5Writer, Hdf5WriterConfig

SHAPE = (2162, 2068)  # numpy order (y, x) of an EIGER 4M
MiB = 1 << 20


def _item(root: str, kind: str, name: str, meta: dict[str, Any]) -> WriteTarget:
    return WriteTarget(root, (), name, {"metadata": meta}, kind=kind, series="bench")


class _Committer:
    """commit_each of each batch: in the calling thread, or (``threaded``) in a commit thread as the receiver has."""

    def __init__(self, writer: Hdf5Writer, threaded: bool) -> None:
        self.writer = writer
        self.queue: queue.Queue[list[Any] | None] | None = queue.Queue(maxsize=4) if threaded else None
        self.thread = threading.Thread(target=self._run) if threaded else None
        if self.thread is not None:
            self.thread.start()

    def _run(self) -> None:
        assert self.queue is not None
        while (batch := self.queue.get()) is not None:
            self._commit(batch)

    def _commit(self, batch: list[Any]) -> None:
        assert self.writer.commit_each(batch) == [None] * len(batch)

    def __call__(self, batch: list[Any] | None) -> None:
        if self.queue is not None:
            self.queue.put(batch)
        elif batch is not None:
            self._commit(batch)

    def join(self) -> None:
        self(None)
        if self.thread is not None:
            self.thread.join()


def run_writer(root: str, blobs: list[bytes], frames: int, batch: int, fsync: bool, threaded: bool,
               framed: bool = False) -> float:
    writer = Hdf5Writer(Hdf5WriterConfig(fsync=fsync), target=root)
    ident = {"series_id": 1, "series_unique_id": "bench"}
    meta = {**ident, "channels": ["data"], "config": {}, "blobs": []}
    handles: list[Any] = []
    commit = _Committer(writer, threaded)

    def send(kind: str, name: str, meta: dict[str, Any], payload: Any) -> None:
        handle = writer.open(_item(root, kind, name, meta))
        writer.write(handle, payload)
        writer.close(handle)
        handles.append(handle)  # NOTE: the list in use when sent (run_writer rebinds it per batch)

    start = time.perf_counter()
    send(SERIES_START, "bench.start", meta, b"")
    for n in range(frames):
        send(FRAME, f"bench_{n:06d}", {**ident, "image_id": n, "shape": list(SHAPE), "dtype": "<u2",
                                       "compression": "bslz4", "hdf5_framed": framed, "element_size": 2},
             blobs[n % len(blobs)])
        if len(handles) >= batch:
            commit(handles)
            handles = []
    send(SERIES_END, "bench.end", {**ident, "frames": frames, "missing": 0, "aborted": False}, b"")
    commit(handles)
    commit.join()
    elapsed = time.perf_counter() - start
    writer.shutdown()
    return elapsed


def run_h5py(path: str, chunks: list[bytes], frames: int, batch: int, swmr: bool) -> float:
    start = time.perf_counter()
    with h5py.File(path, "w", libver="latest") as f:
        data = f.create_dataset("data", shape=(0, *SHAPE), maxshape=(None, *SHAPE), chunks=(1, *SHAPE),
                                dtype="<u2", **hdf5plugin.Bitshuffle(cname="lz4"))
        if swmr:
            f.swmr_mode = True
        fd = f.id.get_vfd_handle()
        for n in range(frames):
            data.resize(n + 1, axis=0)
            data.id.write_direct_chunk((n, 0, 0), chunks[n % len(chunks)])
            if swmr and (n + 1) % batch == 0:
                f.flush()
                os.fsync(fd)
    if swmr:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    generator = FrameGenerator(SHAPE, "<u2", seed=1, distinct=16)
    raw = [bslz4(generator.frame(n)) for n in range(16)]
    framed = [bslz4_hdf5(generator.frame(n)) for n in range(16)]
    total = sum(len(framed[n % 16]) for n in range(args.frames)) / MiB
    work = tempfile.mkdtemp(prefix="hidra-hdf5-bench-", dir=args.workdir)
    modes: dict[str, Callable[[str], float]] = {
        "writer fsync": lambda d: run_writer(d, raw, args.frames, args.batch, True, False),
        "writer fsync thr": lambda d: run_writer(d, raw, args.frames, args.batch, True, True),
        "writer thr V2": lambda d: run_writer(d, framed, args.frames, args.batch, True, True, framed=True),
        "writer no-fsync": lambda d: run_writer(d, raw, args.frames, args.batch, False, False),
        "h5py swmr+fsync": lambda d: run_h5py(os.path.join(d, "x.h5"), framed, args.frames, args.batch, True),
        "h5py plain": lambda d: run_h5py(os.path.join(d, "x.h5"), framed, args.frames, args.batch, False),
    }
    print(f"{args.frames} frames {SHAPE[1]}x{SHAPE[0]} uint16 bslz4, {total / args.frames:.2f} MiB per frame"
          f" compressed ({generator.frame(0).nbytes / MiB:.2f} raw), batches of {args.batch}, in {work}")
    print(f"{'mode':<18} {'frames/s':>9} {'MiB/s':>8} {'range frames/s':>16}")
    try:
        for name, fn in modes.items():
            rates = []
            for r in range(args.repeat):
                d = os.path.join(work, f"{name.replace(' ', '_')}-{r}")
                os.mkdir(d)
                rates.append(args.frames / fn(d))
                shutil.rmtree(d)
            rate = statistics.median(rates)
            print(f"{name:<18} {rate:9.0f} {rate * total / args.frames:8.0f} {min(rates):7.0f}-{max(rates):<7.0f}")
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
