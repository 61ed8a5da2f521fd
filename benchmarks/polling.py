"""The ``polling`` source against ``inotify`` and ``watchdog`` in the same run: close-to-arrival latency end to end,
and the sender's CPU while it watches an idle tree of 100,000 files.

    .venv/bin/python benchmarks/polling.py [--files 50] [--rate 5] [--tree 100000] [--idle-s 70] [--quick]
                                           [--workdir DIR] [--keep]

Latency: for each source a real ``hidra receiver`` and ``hidra sender`` (settings at their defaults, so
``polling`` waits ``settle_s`` = 2 s) on free loopback ports; ``--files`` files of 1 MiB are written into the
watched directory at ``--rate`` files/s, each timed from its ``close()`` to its appearance under its final name in
the target (inotify on the target), median and p99. Idle CPU: a tree of ``--tree`` empty files (1,000 per
directory) is made once; for each source a sender watches it (``scan_at_start: false``, so what is measured is
watching, not the first transfer; the polling source lists the tree once at start either way) and its CPU time is
read over ``--idle-s`` seconds after 5 s of warm-up: more than one ``full_scan_s`` (60 s), so one whole sweep of
the polling source is inside the window. Its peak RSS (VmHWM) is reported too.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Child, percentile, set_topdir, stop_all  # noqa: E402
from inotify_simple import INotify, flags  # noqa: E402

HIDRA = [sys.executable, "-m", "hidra_core"]
SOURCES = ("polling", "inotify", "watchdog")
MiB = 1 << 20


class Arrivals(threading.Thread):
    """time.monotonic() of each name that appears in ``root`` (created by link or renamed in)."""

    def __init__(self, root: str) -> None:
        super().__init__(daemon=True)
        self.times: dict[str, float] = {}
        self._inotify = INotify()
        self._inotify.add_watch(root, flags.CREATE | flags.MOVED_TO)
        self._closing = threading.Event()

    def run(self) -> None:
        while not self._closing.is_set():
            for event in self._inotify.read(timeout=100):
                self.times.setdefault(event.name, time.monotonic())

    def close(self) -> None:
        self._closing.set()
        self.join(5)
        self._inotify.close()


def start_pair(work: str, kind: str, source: str, target: str, *extra: str) -> tuple[Child, Child]:
    label = os.path.basename(os.path.dirname(target)) + "-" + os.path.basename(target)
    receiver = Child([*HIDRA, "receiver", "--set", f"receiver.target={target}", "--set",
                      "receiver.data=tcp://127.0.0.1:0", "--set", "receiver.confirmations=tcp://127.0.0.1:0",
                      "--set", "receiver.status=tcp://127.0.0.1:0", "--set", "receiver.log_each_file=false",
                      "--set", "receiver.rest.address=127.0.0.1:0"],
                     os.path.join(work, f"receiver-{label}.log"))
    match = receiver.wait_for(r"data (\S+), confirmations (\S+), status", 60)
    sets = [f"sender.source.type={kind}", f"sender.source.{kind}.path={source}", *extra,
            f"sender.storage.data={match.group(1)}", f"sender.storage.confirmations={match.group(2)}",
            f"sender.ledger.path={os.path.join(work, f'ledger-{label}.sqlite')}",
            "sender.clients.com=tcp://127.0.0.1:0", "sender.clients.request=tcp://127.0.0.1:0",
            "sender.rest.address=127.0.0.1:0"]
    sender = Child([*HIDRA, "sender", *[a for s in sets for a in ("--set", s)]],
                   os.path.join(work, f"sender-{label}.log"))
    sender.wait_for(r"hidra sender ready", 300)
    sender.wait_for(r"storage receiver is up", 60)
    return sender, receiver


def latency(work: str, kind: str, files: int, rate: float) -> tuple[float, float]:
    """Median and p99 in ms from a file's close to its arrival, over ``files`` files of 1 MiB."""
    base = os.path.join(work, f"lat-{kind}")
    source, target = os.path.join(base, "source"), os.path.join(base, "target")
    os.makedirs(source)
    os.makedirs(target)
    sender, receiver = start_pair(work, kind, source, target)
    arrivals = Arrivals(target)
    arrivals.start()
    closed: dict[str, float] = {}
    data = os.urandom(MiB)
    try:
        start = time.monotonic()
        for n in range(files):
            time.sleep(max(0.0, start + n / rate - time.monotonic()))  # the pace of the producer
            name = f"f{n:04d}.raw"
            with open(os.path.join(source, name), "wb") as f:
                f.write(data)
            closed[name] = time.monotonic()
        deadline = time.monotonic() + 120
        while not closed.keys() <= arrivals.times.keys() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        arrivals.close()
        sender.stop()
        receiver.stop()
    delays = [1000 * (arrivals.times[n] - t) for n, t in closed.items() if n in arrivals.times]
    if len(delays) < files:
        missing = sorted(set(closed) - set(arrivals.times))
        raise RuntimeError(f"{kind}: only {len(delays)} of {files} files arrived (not: {missing[:5]}; stored: "
                           f"{sorted(os.listdir(target))[:3]}...)")
    return percentile(delays, 50), percentile(delays, 99)


def make_tree(root: str, count: int) -> None:
    for n in range(count):
        if n % 1000 == 0:
            os.makedirs(os.path.join(root, f"d{n // 1000:04d}"))
        with open(os.path.join(root, f"d{n // 1000:04d}", f"f{n:06d}.raw"), "wb"):
            pass


def idle_cpu(work: str, kind: str, tree: str, idle_s: float) -> tuple[float, int | None]:
    """The sender's CPU % (100 = one core) while it watches ``tree`` idle, and its peak RSS."""
    target = os.path.join(work, f"idle-target-{kind}")
    os.makedirs(target)
    sender, receiver = start_pair(work, kind, tree, target, f"sender.source.{kind}.scan_at_start=false")
    try:
        time.sleep(5)  # warm-up: start-up work is not idle work
        before, t0 = sender.cpu_seconds(), time.monotonic()
        time.sleep(idle_s)
        cpu = 100 * (sender.cpu_seconds() - before) / (time.monotonic() - t0)
        return cpu, sender.peak_rss()
    finally:
        sender.stop()
        receiver.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--tree", type=int, default=100_000)
    parser.add_argument("--idle-s", type=float, default=70.0)
    parser.add_argument("--quick", action="store_true", help="20 files, a 10,000-file tree, 20 s idle")
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.files, args.tree, args.idle_s = 20, 10_000, 20.0
    work = args.workdir or tempfile.mkdtemp(prefix="hidra-polling-bench-")
    set_topdir(work)  # NOTE: see benchmarks/README.md: file creation on this VM's ext4 is otherwise erratic
    rows = []
    try:
        tree = os.path.join(work, "tree")
        t0 = time.monotonic()
        make_tree(tree, args.tree)
        print(f"made {args.tree} files in {time.monotonic() - t0:.1f} s", flush=True)
        for kind in SOURCES:
            p50, p99 = latency(work, kind, args.files, args.rate)
            cpu, rss = idle_cpu(work, kind, tree, args.idle_s)
            rows.append((kind, p50, p99, cpu, rss))
            print(f"{kind}: done", flush=True)
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.files} x 1 MiB at {args.rate:g} files/s; idle tree of {args.tree} files, {args.idle_s:g} s\n")
    print("| source | close→arrival p50 ms | p99 ms | idle sender CPU % of one core | sender peak RSS MiB |")
    print("|---|---|---|---|---|")
    for kind, p50, p99, cpu, rss in rows:
        print(f"| {kind} | {p50:.0f} | {p99:.0f} | {cpu:.2f} | {(rss or 0) / MiB:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
