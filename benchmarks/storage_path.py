"""Storage-path benchmark: a real `hidra sender` -> `hidra receiver` pair against `cp`, `cp && sync` and raw pyzmq.

    .venv/bin/python benchmarks/storage_path.py [--quick] [--workdir DIR] [--fsync-only | --no-fsync-only]
                                                [--repeat N] [--sets 1MiB,4KiB] [--markdown] [--keep]

For each data set (1000 x 1 MiB, 200 x 8 MiB, 20 x 100 MiB, 5000 x 4 KiB; --quick: a tenth) the files are
generated once in a staging directory. Each mode then runs --repeat times (order rotated) and the median run
is reported: for HiDRA a receiver and a sender are started on free loopback ports, every staged file is renamed
into the watched source directory at once, and the run lasts until the last file appears at its final name in
the target (IN_MOVED_TO). Latency: 200 x 1 MiB written and renamed in at 50 files/s, each file timed from its
rename to its arrival. See benchmarks/README.md for what is measured and why.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import (MiB, ArrivalWatcher, Child, DataSet, Result, generate, move_all,  # noqa: E402
                      Ballast, OtherLoad, percentile, read_all, set_topdir, stop_all,
                      thread_share, verify)

HERE = os.path.dirname(os.path.abspath(__file__))
HIDRA = [sys.executable, "-m", "hidra_core"]
CHUNKSIZE = 10 * MiB  # sender.chunksize default: what the raw zmq baseline sends per message
SETS = [DataSet("1MiB", 1000, MiB), DataSet("8MiB", 200, 8 * MiB), DataSet("100MiB", 20, 100 * MiB),
        DataSet("4KiB", 5000, 4096)]
LATENCY_FILES, LATENCY_RATE = 200, 50.0
EXT4_RECENT_S, EXT4_RECENT_MIN = 65.0, 100  # ext4 without a journal avoids inodes deleted < 60 s ago
BALLAST_FREE = 256 * MiB  # free memory left beside the ballast: a little above the kernel's high watermark


def cpu_sample(*children: Child) -> list[tuple[float, dict[str, float]]]:
    return [(c.cpu_seconds(), c.thread_cpu()) for c in children]


def cpu_account(result: Result, children: tuple[Child, Child], before: list, wall: float) -> None:
    """CPU % of sender and receiver over ``wall`` seconds, and which of their threads used it."""
    after = cpu_sample(*children)
    result.cpu = tuple(100 * (a[0] - b[0]) / wall for a, b in zip(after, before))
    result.threads = "; ".join(f"{who}: {thread_share(b[1], a[1], wall)}"
                               for who, a, b in zip(("sender", "receiver"), after, before))


class Bench:
    def __init__(self, work: str, timeout: float, keep: bool, ballast: bool) -> None:
        self.work, self.timeout, self.keep = work, timeout, keep
        self.staging = os.path.join(work, "staging")
        self._runs = 0
        self._deleted, self._deleted_at = 0, -math.inf  # inodes deleted lately, and when
        self.topdir = set_topdir(work)
        self.ballast = Ballast(work, BALLAST_FREE) if ballast else None

    def rundir(self, label: str) -> str:
        self._runs += 1
        path = os.path.join(self.work, f"run{self._runs:03d}-{label}")
        os.makedirs(path)
        return path

    def done(self, run: str, files: int) -> None:
        if self.keep:
            return
        shutil.rmtree(run, ignore_errors=True)
        os.sync()  # clean inode tables: ext4 then shuns the deleted inodes for 60 s, not 360 s
        if files:
            self._deleted, self._deleted_at = self._deleted + files, time.monotonic()

    def settle(self, staged: str | None = None) -> None:
        """Before a measurement. This disk is ext4 without a journal: allocating an inode scans past every inode
        of its block group deleted in the last 60 s, which cuts file creation from ~40,000/s to ~2,500/s. The
        work dir is marked a top directory, so each run's directory starts in a block group of its own and
        deletions elsewhere do not matter; where that flag cannot be set, wait out the 60 s after deleting
        many files. Then flush dirty pages, so no run pays for another's, fill free memory with the ballast again
        (see Ballast) and read the ``staged`` files once more, so that the ballast goes before they do."""
        wait = self._deleted_at + EXT4_RECENT_S - time.monotonic()
        if not self.topdir and self._deleted >= EXT4_RECENT_MIN and wait > 0:
            print(f"# waiting {wait:.0f} s: ext4 shuns the {self._deleted} inodes just deleted", file=sys.stderr)
            time.sleep(wait)
            self._deleted = 0
        os.sync()
        if self.ballast is not None:
            self.ballast.top_up()
            if staged:
                read_all(staged)

    # -- a real receiver and sender ----------------------------------------------------------------------

    def start_pair(self, run: str, fsync: bool) -> tuple[Child, Child]:
        for sub in ("source", "target", "state"):
            os.makedirs(os.path.join(run, sub))
        receiver = Child([*HIDRA, "receiver", "--set", f"receiver.target={run}/target",
                          "--set", "receiver.data=tcp://127.0.0.1:0",
                          "--set", "receiver.confirmations=tcp://127.0.0.1:0",
                          "--set", "receiver.status=tcp://127.0.0.1:0",
                          *([] if fsync else ["--set", "receiver.files.fsync=false"])], f"{run}/receiver.log")
        ready = receiver.wait_for(r"hidra receiver ready: data (\S+), confirmations (\S+),", 60)
        sender = Child([*HIDRA, "sender", "--set", f"sender.source.inotify.path={run}/source",
                        "--set", f"sender.storage.data={ready[1]}", "--set", f"sender.storage.confirmations={ready[2]}",
                        "--set", "sender.clients.com=tcp://127.0.0.1:0",  # no fixed ports; no client registers
                        "--set", "sender.clients.request=tcp://127.0.0.1:0",
                        "--set", f"sender.ledger.path={run}/state/ledger.sqlite"], f"{run}/sender.log")
        sender.wait_for(r"hidra sender ready", 60)
        sender.wait_for(r"storage receiver is up", 60)  # the link is live: the first file goes out at once
        return sender, receiver

    def stop_pair(self, result: Result, sender: Child, receiver: Child) -> None:
        result.rss = (sender.peak_rss(), receiver.peak_rss())
        for who, child in (("sender", sender), ("receiver", receiver)):
            if child.stop() != 0:
                result.notes.append(f"{who} exited with {child.popen.returncode}")

    def hidra_throughput(self, ds: DataSet, fsync: bool) -> Result:
        result = Result(ds.name, f"hidra {'fsync' if fsync else 'no-fsync'}")
        run = self.rundir(f"{ds.name}-{'fsync' if fsync else 'nofsync'}")
        staged, names = os.path.join(self.staging, ds.name), ds.names()
        self.settle(staged)
        sender, receiver = self.start_pair(run, fsync)
        watcher = ArrivalWatcher(f"{run}/target", names)
        watcher.start()
        moved = False
        try:
            cpu0, others, start = cpu_sample(sender, receiver), OtherLoad(), time.monotonic()
            move_all(names, staged, f"{run}/source")
            moved = True
            complete = watcher.wait(self.timeout)
            end = max(watcher.arrivals.values()) if complete else time.monotonic()
            cpu_account(result, (sender, receiver), cpu0, end - start)
            result.other_cpu = others.percent()
            if complete:
                result.files_s, result.mib_s = ds.count / (end - start), ds.total / MiB / (end - start)
                result.status = verify(names, f"{run}/source", f"{run}/target", ds.size) or "ok"
            else:
                result.status = f"FAILED: {len(watcher.arrivals)}/{ds.count} files after {self.timeout:.0f} s"
        finally:
            watcher.close()
            self.stop_pair(result, sender, receiver)
            if moved:
                move_all(names, f"{run}/source", staged)
            self.done(run, ds.count)
        return result

    def hidra_latency(self, fsync: bool) -> Result:
        result = Result(f"latency {LATENCY_FILES}x1MiB@{LATENCY_RATE:.0f}/s",
                        f"hidra {'fsync' if fsync else 'no-fsync'}")
        run = self.rundir(f"latency-{'fsync' if fsync else 'nofsync'}")
        names = DataSet("lat", LATENCY_FILES, MiB).names()
        os.makedirs(f"{run}/write")
        self.settle()
        sender, receiver = self.start_pair(run, fsync)
        watcher = ArrivalWatcher(f"{run}/target", names)
        watcher.start()
        try:
            closed: dict[str, float] = {}
            cpu0, others, start = cpu_sample(sender, receiver), OtherLoad(), time.monotonic()
            for i, name in enumerate(names):  # write each file just in time, then rename it in: its "close"
                data = os.urandom(MiB)
                time.sleep(max(0.0, start + i / LATENCY_RATE - time.monotonic()))
                with open(f"{run}/write/{name}", "wb") as out:
                    out.write(data)
                os.rename(f"{run}/write/{name}", f"{run}/source/{name}")
                closed[name] = time.monotonic()
            complete = watcher.wait(self.timeout)
            cpu_account(result, (sender, receiver), cpu0, time.monotonic() - start)
            result.other_cpu = others.percent()
            if complete:
                delays = [1000 * (watcher.arrivals[n] - closed[n]) for n in names]
                result.p50_ms, result.p99_ms = percentile(delays, 50), percentile(delays, 99)
                result.files_s = len(names) / (max(watcher.arrivals.values()) - start)
                result.mib_s = result.files_s  # 1 MiB files
                result.status = verify(names, f"{run}/source", f"{run}/target", MiB) or "ok"
            else:
                result.status = f"FAILED: {len(watcher.arrivals)}/{len(names)} files after {self.timeout:.0f} s"
        finally:
            watcher.close()
            self.stop_pair(result, sender, receiver)
            self.done(run, len(names))
        return result

    # -- baselines -----------------------------------------------------------------------------------------

    def copy(self, ds: DataSet) -> list[Result]:
        """``cp -r`` of the staged set, then ``sync``: one run gives both the cp and the cp+sync figure."""
        run = self.rundir(f"{ds.name}-cp")
        dest = os.path.join(run, "dest")
        self.settle(os.path.join(self.staging, ds.name))
        others, start = OtherLoad(), time.monotonic()
        subprocess.run(["cp", "-r", os.path.join(self.staging, ds.name), dest], check=True, timeout=self.timeout)
        copied = time.monotonic()
        subprocess.run(["sync"], check=True, timeout=self.timeout)
        synced = time.monotonic()
        other_cpu = others.percent()
        problem = verify(ds.names(), os.path.join(self.staging, ds.name), dest, ds.size) or "ok"
        self.done(run, ds.count)
        return [Result(ds.name, mode, ds.count / wall, ds.total / MiB / wall, status=problem, other_cpu=other_cpu)
                for mode, wall in (("cp+sync", synced - start), ("cp", copied - start))]

    def raw_zmq(self, ds: DataSet) -> Result:
        """The same bytes as the sender's wire messages (files cut in chunks of CHUNKSIZE) over PUSH/PULL."""
        size = min(ds.size, CHUNKSIZE)
        count = ds.count * max(1, math.ceil(ds.size / CHUNKSIZE))
        result = Result(ds.name, "raw zmq")
        if size != ds.size:
            result.notes.append(f"{count} messages of {size // MiB} MiB")
        run = self.rundir(f"{ds.name}-zmq")
        self.settle()
        worker = [sys.executable, os.path.join(HERE, "_rawzmq.py")]
        pull, others = Child([*worker, "pull", str(size), str(count)], f"{run}/pull.log"), OtherLoad()
        try:
            endpoint = pull.wait_for(r"ready (\S+)", 60)[1]
            push = Child([*worker, "push", endpoint, str(size), str(count)], f"{run}/push.log")
            got = json.loads(pull.wait_for(r"result (\{.*\})", self.timeout)[1])
            sent = json.loads(push.wait_for(r"result (\{.*\})", 60)[1])
            wall = got["last"] - got["first"]  # first to last message at the receiver: count - 1 intervals
            result.files_s = (count - 1) / wall / (count / ds.count)
            result.mib_s = (count - 1) * size / MiB / wall
            result.rss = (sent["peak_rss"], got["peak_rss"])
            result.other_cpu = others.percent()
        except (RuntimeError, TimeoutError) as exc:
            result.status = f"FAILED: {exc}"
        finally:
            stop_all()
            self.done(run, 0)
        return result


# -- report ------------------------------------------------------------------------------------------------

def median_run(runs: list[Result], max_other: float) -> Result:
    """The run with the median MiB/s (latency: median p50) among the undisturbed ones; the highest RSS of all."""
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        return runs[-1]
    quiet = [r for r in ok if r.other_cpu is None or r.other_cpu <= max_other] or ok
    latency = ok[0].p50_ms is not None
    quiet.sort(key=lambda r: r.p50_ms if latency else -(r.mib_s or 0))
    out = dataclasses.replace(quiet[(len(quiet) - 1) // 2], notes=list(quiet[(len(quiet) - 1) // 2].notes))
    out.rss = tuple(max((x for x in col if x is not None), default=None) for col in zip(*(r.rss for r in ok)))
    if len(quiet) > 1 and not latency:
        out.spread = (min(r.mib_s or 0 for r in quiet), max(r.mib_s or 0 for r in quiet))
    elif len(quiet) > 1:
        out.notes.append("p50 over runs " + "/".join(f"{r.p50_ms:.1f}" for r in quiet))
    if len(quiet) < len(ok):
        out.notes.append(f"{len(ok) - len(quiet)} disturbed run{'s' if len(ok) - len(quiet) > 1 else ''} left out")
    elif out.other_cpu is not None and out.other_cpu > max_other:
        out.notes.append("every run disturbed")
    failed = [r for r in runs if r.status != "ok"]
    if failed:
        out.notes.append(f"{len(failed)} of {len(runs)} runs {failed[0].status}")
    return out


COLUMNS = ["set", "mode", "files/s", "MiB/s", "MiB/s min-max", "p50/p99 ms", "peak RSS snd/rcv MiB",
           "CPU% snd/rcv", "other CPU%", "x cp+sync", "x raw zmq", "status"]


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def rows(results: list[Result]) -> list[list[str]]:
    table = []
    for r in results:
        ref = {x.mode: x.mib_s for x in results if x.set == r.set and x.status == "ok"}
        ratio = [(_num(r.mib_s / ref[m], 2) if r.mib_s and ref.get(m) and r.mode != m else "-")
                 for m in ("cp+sync", "raw zmq")]
        spread = "-" if r.spread is None else f"{r.spread[0]:,.0f}-{r.spread[1]:,.0f}"
        lat = "-" if r.p50_ms is None else f"{r.p50_ms:.1f} / {r.p99_ms:.1f}"
        rss = "-" if r.rss == (None, None) else " / ".join(_num(x and x / MiB) for x in r.rss)
        cpu = "-" if r.cpu == (None, None) else " / ".join(_num(x) for x in r.cpu)
        table.append([r.set, r.mode, _num(r.files_s), _num(r.mib_s), spread, lat, rss, cpu, _num(r.other_cpu), *ratio,
                      "; ".join([r.status, *r.notes])])
    return table


def print_table(results: list[Result], markdown: bool) -> None:
    table = rows(results)
    widths = [max(len(x) for x in col) for col in zip(COLUMNS, *table)]
    for row in [COLUMNS, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    threads = [f"{r.set} {r.mode}: {r.threads}" for r in results if r.threads]
    if threads:
        print("\nCPU per thread of the median run (% of one core; main = router loop / receive loop, py-N = source "
              "or commit thread):")
        print("\n".join(f"  {line}" for line in threads))
    if markdown:
        print("\n| " + " | ".join(COLUMNS) + " |")
        print("|" + "|".join("---" for _ in COLUMNS) + "|")
        for row in table:
            print("| " + " | ".join(row) + " |")


# -- main --------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a tenth of the files in every set, one run per mode")
    p.add_argument("--workdir", metavar="DIR", help="where staging and runs go (default: a new dir under /tmp)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fsync-only", action="store_true", help="only run HiDRA with receiver.files.fsync=true")
    mode.add_argument("--no-fsync-only", action="store_true", help="only run HiDRA with receiver.files.fsync=false")
    p.add_argument("--repeat", type=int, metavar="N", help="runs per mode, median reported (default 3; --quick 1)")
    p.add_argument("--sets", default=",".join(s.name for s in SETS), help="comma-separated subset of the data sets")
    p.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    p.add_argument("--no-ballast", action="store_true", help="leave free memory free (see Ballast in _harness.py)")
    p.add_argument("--max-other", type=float, default=25.0, metavar="PCT",
                   help="a run during which other processes used more CPU (%% of one core) counts as disturbed")
    p.add_argument("--retries", type=int, default=2, help="extra attempts of a disturbed run")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before a run counts as failed")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def attempt(label: str, run: Callable[[], list[Result]]) -> list[Result]:
    """Run one measurement; a failure is recorded as a result and the benchmark goes on."""
    try:
        new = run()
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        new = [Result(label, "?", status=f"FAILED: {exc}")]
        stop_all()
    for r in new:
        print(f"# {r.set} {r.mode}: {_num(r.files_s)} files/s, {_num(r.mib_s)} MiB/s"
              + ("" if r.p50_ms is None else f", p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms")
              + f", {r.status}" + (f" [CPU {r.threads}]" if r.threads else "")
              + ("" if r.other_cpu is None else f" [other processes {r.other_cpu:.0f}%]"), file=sys.stderr)
    return new


def measure(plan: dict[str, Callable[[], list[Result]]], label: str, args: argparse.Namespace,
            runs: list[Result]) -> None:
    """Every entry of ``plan`` ``args.repeat`` times, in rotated order, each run appended to ``runs``; a run
    during which other processes used more than ``args.max_other`` % CPU is tried again (``args.retries``)."""
    names = list(plan)
    for rep in range(args.repeat):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            for retry in range(args.retries + 1):
                new = attempt(label, plan[name])
                runs += new
                busy = max((r.other_cpu or 0 for r in new), default=0)
                if busy <= args.max_other or retry == args.retries:
                    break
                print(f"# other processes used {busy:.0f}% CPU meanwhile: once more", file=sys.stderr)
                time.sleep(5)


def medians(runs: list[Result], max_other: float) -> list[Result]:
    """The median run of each set and mode, in the order they first ran."""
    keys = list(dict.fromkeys((r.set, r.mode) for r in runs))
    return [median_run([r for r in runs if (r.set, r.mode) == key], max_other) for key in keys]


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sets = [s for s in SETS if s.name in args.sets.split(",")]
    if args.quick:
        sets = [DataSet(s.name, max(1, s.count // 10), s.size) for s in sets]
    args.repeat = args.repeat or (1 if args.quick else 3)
    modes = [m for m in (True, False) if not (args.fsync_only and not m) and not (args.no_fsync_only and m)]
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="hidra-bench-", dir=args.workdir)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        bench, runs = Bench(work, args.timeout, args.keep, not args.no_ballast), []
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"# {datetime.now().isoformat(timespec='seconds')}  work dir {work}"
          + ("" if bench.topdir else " (not a top directory: waits after deleting files)"), file=sys.stderr)
    try:
        if bench.ballast is not None:
            print("# filling free memory with the ballast ...", file=sys.stderr)
            bench.ballast.top_up()
        if not args.no_latency:
            plan = {f"hidra {m}": (lambda m=m: [bench.hidra_latency(m)]) for m in modes}
            measure(plan, "latency", args, runs)
        for ds in sets:
            print(f"# generating {ds.count} x {ds.size} B ...", file=sys.stderr)
            generate(os.path.join(bench.staging, ds.name), ds)
            plan = {f"hidra {m}": (lambda m=m: [bench.hidra_throughput(ds, m)]) for m in modes}
            plan["cp"] = lambda: bench.copy(ds)
            plan["raw zmq"] = lambda: [bench.raw_zmq(ds)]
            measure(plan, ds.name, args, runs)
            bench.done(os.path.join(bench.staging, ds.name), ds.count)
    except KeyboardInterrupt:
        print("# interrupted: the table shows the runs that finished", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not stop the clean-up half-way
            signal.signal(sig, signal.SIG_IGN)
        if runs:
            print_table(medians(runs, args.max_other), args.markdown)
        stop_all()
        if bench.ballast is not None:
            bench.ballast.close()
        if args.keep:
            print(f"# kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
