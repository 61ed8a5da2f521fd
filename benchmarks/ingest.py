"""Ingest benchmark: a producer process (``hidra_core.ingest.Ingest.send_file``) -> `hidra sender` (``zmq_ingest``)
-> `hidra receiver` (``files``), against raw pyzmq PUSH/PULL of messages of the same size, in the same run.

    .venv/bin/python benchmarks/ingest.py [--small 5000] [--large 200] [--repeat 3] [--workdir DIR] [--keep]

Sets: --small files of 4 KiB and --large files of 8 MiB. Each row is the median of --repeat runs. HiDRA runs
last from the producer's first send to the arrival of the last file at its final name in the target
(IN_MOVED_TO), with the receiver's fsync on (the default) and off, each run in its own directory below a work
dir marked as an ext4 top directory (see storage_path.py: recently deleted inodes slow file creation down); raw
runs from the first send to the last receive. Files/s, MiB/s, the ratio to raw, and peak RSS (VmHWM) of the
sender and the producer.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import MiB, ArrivalWatcher, Child, DataSet, set_topdir, stop_all, thread_share  # noqa: E402
from eiger_stream import raw_pyzmq  # noqa: E402

HIDRA = [sys.executable, "-m", "hidra_core"]


def produce(endpoint: str, size: int, count: int) -> None:
    """The producer process: ``count`` files of ``size`` random bytes, named as ``DataSet.names``."""
    from _rawzmq import peak_rss

    from hidra_core.ingest import Ingest

    payload = os.urandom(size)
    names = DataSet("", count, size).names()
    with Ingest(endpoint, producer="bench") as producer:
        start = time.monotonic()
        for name in names:
            producer.send_file(name, payload)
        sent = time.monotonic()
    print("result", json.dumps({"start": start, "sent": sent, "peak_rss": peak_rss()}), flush=True)


def hidra(work: str, ds: DataSet, fsync: bool) -> dict[str, Any]:
    run = tempfile.mkdtemp(prefix=f"{ds.name}-", dir=work)
    os.makedirs(f"{run}/target")
    receiver = Child([*HIDRA, "receiver", "--set", f"receiver.target={run}/target",
                      *(f"--set=receiver.{k}=tcp://127.0.0.1:0" for k in ("data", "confirmations", "status")),
                      f"--set=receiver.files.fsync={str(fsync).lower()}", "--set=receiver.rest.address=127.0.0.1:0"],
                     f"{run}/receiver.log")
    ready = receiver.wait_for(r"hidra receiver ready: data (\S+), confirmations (\S+),", 60)
    sender = Child([*HIDRA, "sender", "--set=sender.source.type=zmq_ingest",
                    "--set=sender.source.zmq_ingest.endpoint=tcp://127.0.0.1:0",
                    f"--set=sender.storage.data={ready[1]}", f"--set=sender.storage.confirmations={ready[2]}",
                    "--set=sender.clients.com=tcp://127.0.0.1:0", "--set=sender.clients.request=tcp://127.0.0.1:0",
                    "--set=sender.rest.address=127.0.0.1:0",
                    f"--set=sender.ledger.path={run}/ledger.sqlite"], f"{run}/sender.log")
    endpoint = sender.wait_for(r"zmq_ingest: listening on (\S+)", 60)[1]
    sender.wait_for(r"storage receiver is up", 60)
    watcher = ArrivalWatcher(f"{run}/target", ds.names())
    watcher.start()
    producer = Child([sys.executable, __file__, "produce", endpoint, str(ds.size), str(ds.count)],
                     f"{run}/producer.log")
    before = sender.thread_cpu(), receiver.thread_cpu()
    try:
        sent = json.loads(producer.wait_for(r"result (\{.*\})", 600)[1])
        if not watcher.wait(600):
            raise RuntimeError(f"{len(watcher.arrivals)}/{ds.count} files arrived")
        wall = max(watcher.arrivals.values()) - sent["start"]
        threads = (f"sender: {thread_share(before[0], sender.thread_cpu(), wall)}; receiver:"
                   f" {thread_share(before[1], receiver.thread_cpu(), wall)}")
        sizes = {os.path.getsize(f"{run}/target/{n}") for n in ds.names()}
        assert sizes == {ds.size}, sizes
        return {"files_s": ds.count / wall, "mib_s": ds.total / MiB / wall,
                "rss": {"sender": sender.peak_rss(), "producer": sent["peak_rss"]}, "threads": threads,
                "sent_share": (sent["sent"] - sent["start"]) / wall}
    finally:
        watcher.close()
        for child in (producer, sender, receiver):
            child.stop()
        shutil.rmtree(run, ignore_errors=True)
        os.sync()  # NOTE: clean inode tables, so ext4 shuns the deleted inodes for 60 s only (see storage_path.py)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda r: abs(r["mib_s"] - statistics.median(x["mib_s"] for x in runs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=5000, help="files of 4 KiB")
    parser.add_argument("--large", type=int, default=200, help="files of 8 MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="hidra-ingest-bench-", dir=args.workdir)
    if not set_topdir(work):  # NOTE: each run's directory in a block group of its own: see storage_path.settle
        print("# not a top directory: file creation may be slowed by the files the last run deleted",
              file=sys.stderr)
    print("| set | mode | files/s | MiB/s | / raw | sender RSS MiB | producer RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    try:
        for ds in (DataSet("4KiB", args.small, 4096), DataSet("8MiB", args.large, 8 * MiB)):
            raw = median_of([raw_pyzmq(work, ds.size, ds.count) for _ in range(args.repeat)])
            print(f"| {ds.count} x {ds.name} | raw pyzmq | {raw['frames_s']:.0f} | {raw['mib_s']:.0f} | 1 |"
                  f" | {raw['rss']['push'] / MiB:.0f} |", flush=True)
            for fsync in (True, False):
                got = median_of([hidra(work, ds, fsync) for _ in range(args.repeat)])
                print(f"| {ds.count} x {ds.name} | hidra {'fsync' if fsync else 'no-fsync'} | {got['files_s']:.0f} |"
                      f" {got['mib_s']:.0f} | {got['mib_s'] / raw['mib_s']:.2f} | {got['rss']['sender'] / MiB:.0f} |"
                      f" {got['rss']['producer'] / MiB:.0f} |", flush=True)
                notes.append(f"{ds.name} {'fsync' if fsync else 'no-fsync'}: {got['threads']}")
        print("\nCPU per thread of the median run (% of one core; py-N: the source or commit thread):")
        print("\n".join(f"  {note}" for note in notes))
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["produce"]:
        produce(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
