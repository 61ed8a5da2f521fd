"""The sender's per-pipeline work in N threads of one process against N processes: the measurement behind
``sender.streams`` being threads.

    .venv/bin/python benchmarks/pipelines.py [--scale 1,2,4,8] [--seconds 4] [--file-mib 256] [--markdown]

A pipeline does what one of the sender's fetch workers and its share of the router loop do for a large file: the
real ``file`` fetcher reads 10 MiB chunks of a file (from the page cache; its buffer pool), ``Checksums`` hashes
each (xxh3, chunk and file), and the chunk goes zero-copy to a PUSH socket connected to a PULL sink process of its
own over tcp://127.0.0.1. For each N, in one run:

* raw       N processes sending one prepared buffer, no read and no hash: what the transport itself does
* processes N processes, each a pipeline with its own ZeroMQ context
* threads   one process, one context with N I/O threads, N pipelines in threads (what ``sender.streams: N`` is)

Threads within 10-20 % of processes mean the GIL is not what limits the heavy parts (read, xxh3 and zmq release
it); the sinks run on the same machine and take their share of its cores.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from typing import Any

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine  # noqa: E402
from hidra_core import FileEvent  # noqa: E402
from hidra_core.sender.outgoing import Checksums  # noqa: E402
from hidra_files.fetcher import FileFetcher, FileFetcherConfig  # noqa: E402

MiB = 2**20
CHUNK = 10 * MiB  # sender.chunksize default
HWM = 4  # sender.storage.hwm default
META = json.dumps({"filename": "x.raw", "chunk_number": 0, "chunksize": CHUNK}).encode()


def sink(conn: Any) -> None:
    """Bind a PULL socket, say where, count bytes until an empty message; report (first, last, bytes)."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = 16
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    conn.send(f"tcp://127.0.0.1:{port}")
    first = last = 0.0
    total = 0
    while True:
        frames = pull.recv_multipart(copy=False)
        if len(frames) == 1:
            break
        last = time.monotonic()
        first = first or last
        total += len(frames[1])
    conn.send((first, last, total))
    pull.close()
    ctx.term()


def pipeline(endpoint: str, path: str, seconds: float, raw: bool, ctx: zmq.Context | None = None) -> None:
    own = ctx is None
    context = ctx or zmq.Context()
    push = context.socket(zmq.PUSH)
    push.sndhwm = HWM
    push.connect(endpoint)
    fetcher = FileFetcher(FileFetcherConfig())
    event = FileEvent(os.path.dirname(path), "", os.path.basename(path))
    stat = fetcher.stat(event)
    assert stat is not None
    count = -(-stat.size // CHUNK)
    ready = bytes(CHUNK)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if raw:
            push.send_multipart([META, ready], copy=False)
            continue
        sums = Checksums(count)
        for chunk in fetcher.chunks(event, stat, CHUNK):
            payload, _chunk_sum, _file_sum = sums.add(chunk)
            push.send_multipart([META, payload], copy=False)
            del payload, chunk  # NOTE: the fetcher's pool reuses a buffer once only ZeroMQ's reference is left
    push.send(b"")
    push.close(linger=-1)
    if own:
        context.term()


def threads(endpoints: list[str], paths: list[str], seconds: float) -> None:
    context = zmq.Context(io_threads=len(endpoints))
    workers = [threading.Thread(target=pipeline, args=(e, p, seconds, False, context))
               for e, p in zip(endpoints, paths)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    context.term()


def run(mode: str, paths: list[str], seconds: float) -> float:
    """GB/s into the N sinks together, from the first message any got to the last."""
    n = len(paths)
    pipes = [mp.Pipe() for _ in range(n)]
    sinks = [mp.Process(target=sink, args=(child,)) for _parent, child in pipes]
    for proc in sinks:
        proc.start()
    endpoints = [parent.recv() for parent, _child in pipes]
    if mode == "threads":
        senders = [mp.Process(target=threads, args=(endpoints, paths, seconds))]
    else:
        senders = [mp.Process(target=pipeline, args=(e, p, seconds, mode == "raw")) for e, p in zip(endpoints, paths)]
    for proc in senders:
        proc.start()
    reports = [parent.recv() for parent, _child in pipes]
    for proc in [*senders, *sinks]:
        proc.join()
    first, last = min(r[0] for r in reports), max(r[1] for r in reports)
    return sum(r[2] for r in reports) / (last - first) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="1,2,4,8", help="numbers of pipelines (default 1,2,4,8)")
    p.add_argument("--seconds", type=float, default=4.0, help="how long each run sends (default 4)")
    p.add_argument("--file-mib", type=int, default=256, help="size of each pipeline's file (default 256)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    scale = [int(n) for n in args.scale.split(",")]
    with tempfile.TemporaryDirectory(prefix="hidra-pipelines-") as work:
        paths = []
        for i in range(max(scale)):
            paths.append(os.path.join(work, f"f{i}.raw"))
            with open(paths[-1], "wb") as f:
                for _ in range(args.file_mib):
                    f.write(os.urandom(MiB))
        print(f"# {machine()}; {args.seconds:g} s per run, 10 MiB chunks, files of {args.file_mib} MiB in the page"
              " cache", file=sys.stderr)
        rows = []
        for n in scale:
            figures = {mode: run(mode, paths[:n], args.seconds) for mode in ("raw", "processes", "threads")}
            rows.append((n, figures))
            print(f"# N={n}: " + ", ".join(f"{k} {v:.2f} GB/s" for k, v in figures.items()), file=sys.stderr)
    head = ["N", "raw GB/s", "processes GB/s", "threads GB/s", "threads / processes", "threads / raw"]
    table = [[str(n), *(f"{f[m]:.2f}" for m in ("raw", "processes", "threads")),
              f"{f['threads'] / f['processes']:.2f}", f"{f['threads'] / f['raw']:.2f}"] for n, f in rows]
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
        for row in [head, *table]:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
