"""Storage-path benchmark: a real `hidra sender` -> `hidra receiver` pair against `cp`, `cp && sync` and raw pyzmq.

    .venv/bin/python benchmarks/storage_path.py [--quick] [--workdir DIR] [--fsync-only | --no-fsync-only]
                                                [--repeat N] [--sets 1MiB,4KiB] [--markdown] [--keep]
                                                [--streams N,... --receivers N,... | --scale N,...] [--curve]

For each data set (1000 x 1 MiB, 200 x 8 MiB, 20 x 100 MiB, 5000 x 4 KiB; --quick: a tenth) the files are
generated once in a staging directory. Each mode then runs --repeat times (order rotated) and the median run
is reported: for HiDRA a receiver and a sender are started on free loopback ports, every staged file is renamed
into the watched source directory at once, and the run lasts until the last file appears at its final name in
the target (IN_MOVED_TO). Latency: 200 x 1 MiB written and renamed in at 50 files/s, each file timed from its
rename to its arrival. --scale 1,2,4,8: for each N, HiDRA with N streams and a receiver group of N workers
against N raw zmq pairs and N parallel cp + one sync, in one table. See benchmarks/README.md for what is measured
and why. --curve: every HiDRA setup once more with security.curve on (throwaway keys), and raw zmq with CURVE.
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
                      Ballast, OtherLoad, machine, percentile, read_all, set_topdir, stop_all,
                      thread_share, verify)
from _report import medians, num, print_table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HIDRA = [sys.executable, "-m", "hidra_core"]
CHUNKSIZE = 10 * MiB  # sender.chunksize default: what the raw zmq baseline sends per message
SETS = [DataSet("1MiB", 1000, MiB), DataSet("8MiB", 200, 8 * MiB), DataSet("100MiB", 20, 100 * MiB),
        DataSet("4KiB", 5000, 4096)]
LATENCY_FILES, LATENCY_RATE = 200, 50.0
EXT4_RECENT_S, EXT4_RECENT_MIN = 65.0, 100  # ext4 without a journal avoids inodes deleted < 60 s ago
BALLAST_FREE = 256 * MiB  # free memory left beside the ballast: a little above the kernel's high watermark


@dataclasses.dataclass(frozen=True)
class Setup:
    """How HiDRA runs: the sender's data streams and the receiver processes that take them."""
    streams: int | None = None  # sender.streams; None: the sender's default
    receivers: int = 1  # `hidra receiver --workers`: more than 1 is a receiver group
    n: int = 1  # --scale: the N of the table row (then streams = receivers = N)
    tag: str = ""  # added to the mode ("hidra fsync s2 r1") when --streams / --receivers chose it
    curve: bool = False  # security.curve on, with the keys of Bench.keys

    @classmethod
    def scaled(cls, n: int) -> Setup:
        return cls(n, n, n)

    @classmethod
    def chosen(cls, streams: int | None, receivers: int) -> Setup:
        return cls(streams, receivers, tag=f" s{streams or 'default'} r{receivers}")

    def mode(self, fsync: bool) -> str:
        return f"hidra {'fsync' if fsync else 'no-fsync'}{self.tag}{' curve' if self.curve else ''}"


def storage_endpoints(receiver: Child, workers: int) -> tuple[str, str]:
    """``sender.storage.data`` and ``.confirmations`` from the receiver's ready line: an endpoint each, or, for a
    receiver group (whose workers log their own, plain ready lines too), the lists of the group's line."""
    if workers == 1:
        ready = receiver.wait_for(r"hidra receiver ready: data (\S+), confirmations (\S+),", 60)
        return ready[1], ready[2]
    ready = receiver.wait_for(r"hidra receiver group ready: (\d+) workers; data (\[[^\]]*\]), confirmations "
                              r"(\[[^\]]*\])", 60)
    if int(ready[1]) != workers:
        raise RuntimeError(f"asked for {workers} receiver workers, the group has {ready[1]}: {ready[0]}")
    return ready[2], ready[3]  # YAML flow lists, as `--set` takes them


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

    def start_pair(self, run: str, fsync: bool, setup: Setup) -> tuple[Child, Child]:
        for sub in ("source", "target", "state"):
            os.makedirs(os.path.join(run, sub))
        workers = ["--workers", str(setup.receivers)] if setup.receivers > 1 else []
        if setup.curve:
            workers += ["--set", "security.curve=true", "--set", f"security.keys_dir={self.keys()}"]
        receiver = Child([*HIDRA, "receiver", *workers, "--set", f"receiver.target={run}/target",
                          "--set", "receiver.data=tcp://127.0.0.1:0",
                          "--set", "receiver.confirmations=tcp://127.0.0.1:0",
                          "--set", "receiver.status=tcp://127.0.0.1:0", "--set", "receiver.rest.address=127.0.0.1:0",
                          *([] if fsync else ["--set", "receiver.files.fsync=false"])], f"{run}/receiver.log")
        data, confirm = storage_endpoints(receiver, setup.receivers)
        streams = [] if setup.streams is None else ["--set", f"sender.streams={setup.streams}"]
        if setup.curve:
            streams += ["--set", "security.curve=true", "--set", f"security.keys_dir={self.keys()}"]
        sender = Child([*HIDRA, "sender", "--set", f"sender.source.inotify.path={run}/source", *streams,
                        "--set", f"sender.storage.data={data}", "--set", f"sender.storage.confirmations={confirm}",
                        "--set", "sender.clients.com=tcp://127.0.0.1:0",  # no fixed ports; no client registers
                        "--set", "sender.clients.request=tcp://127.0.0.1:0", "--set", "sender.rest.address=127.0.0.1:0",
                        "--set", f"sender.ledger.path={run}/state/ledger.sqlite"], f"{run}/sender.log")
        sender.wait_for(r"hidra sender ready", 60)
        # NOTE: the link is live (to every member of a group): the first file goes out at once
        sender.wait_for(r"storage receiver (?:at \S+ )?is up", 60, count=setup.receivers)  # a group: "at <data>"
        return sender, receiver

    def stop_pair(self, result: Result, sender: Child, receiver: Child) -> None:
        result.rss = (sender.peak_rss(), receiver.peak_rss())
        for who, child in (("sender", sender), ("receiver", receiver)):
            if child.stop() != 0:
                result.notes.append(f"{who} exited with {child.popen.returncode}")

    def hidra_throughput(self, ds: DataSet, fsync: bool, setup: Setup) -> Result:
        result = Result(ds.name, setup.mode(fsync), n=setup.n)
        run = self.rundir(f"{ds.name}-{'fsync' if fsync else 'nofsync'}-s{setup.streams or 0}r{setup.receivers}")
        staged, names = os.path.join(self.staging, ds.name), ds.names()
        self.settle(staged)
        sender, receiver = self.start_pair(run, fsync, setup)
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

    def hidra_latency(self, fsync: bool, setup: Setup) -> Result:
        result = Result(f"latency {LATENCY_FILES}x1MiB@{LATENCY_RATE:.0f}/s", setup.mode(fsync))
        run = self.rundir(f"latency-{'fsync' if fsync else 'nofsync'}-s{setup.streams or 0}r{setup.receivers}")
        names = DataSet("lat", LATENCY_FILES, MiB).names()
        os.makedirs(f"{run}/write")
        self.settle()
        sender, receiver = self.start_pair(run, fsync, setup)
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

    def copy(self, ds: DataSet, n: int = 1) -> list[Result]:
        """``cp`` of the staged set by ``n`` processes (each a disjoint part of the files), then one ``sync``: one
        run gives both the cp and the cp+sync figure."""
        run = self.rundir(f"{ds.name}-cp{n}")
        staged, dest = os.path.join(self.staging, ds.name), os.path.join(run, "dest")
        os.makedirs(dest)
        self.settle(staged)
        names = ds.names()
        others, start = OtherLoad(), time.monotonic()
        run_all([["cp", "-t", dest, *names[i::n]] for i in range(n)], staged, self.timeout)
        copied = time.monotonic()
        subprocess.run(["sync"], check=True, timeout=self.timeout)
        synced = time.monotonic()
        other_cpu = others.percent()
        problem = verify(names, staged, dest, ds.size) or "ok"
        self.done(run, ds.count)
        return [Result(ds.name, mode, ds.count / wall, ds.total / MiB / wall, status=problem, other_cpu=other_cpu, n=n)
                for mode, wall in (("cp+sync", synced - start), ("cp", copied - start))]

    def keys(self) -> str:
        """A directory with throwaway sender and receiver key pairs (made on first use)."""
        keys = os.path.join(self.work, "keys")
        if not os.path.isdir(keys):
            for name in ("sender", "receiver"):
                subprocess.run([*HIDRA, "keys", "generate", name, "--dir", keys], check=True, capture_output=True)
        return keys

    def raw_zmq(self, ds: DataSet, n: int = 1, curve: bool = False) -> Result:
        """The same bytes as the sender's wire messages (files cut in chunks of CHUNKSIZE) over ``n`` PUSH/PULL
        pairs of processes at once, each a share of the messages (at least two), started together."""
        size, per_file = min(ds.size, CHUNKSIZE), max(1, math.ceil(ds.size / CHUNKSIZE))
        counts = [max(2, len(range(i, ds.count * per_file, n))) for i in range(n)]
        count = sum(counts)
        result = Result(ds.name, "raw zmq curve" if curve else "raw zmq", n=n)
        env = {**os.environ, "HIDRA_BENCH_CURVE": self.keys()} if curve else None
        if size != ds.size:
            result.notes.append(f"{count} messages of {size // MiB} MiB")
        run = self.rundir(f"{ds.name}-zmq{n}")
        self.settle()
        worker = [sys.executable, os.path.join(HERE, "_rawzmq.py")]
        others = OtherLoad()
        try:
            pulls = [Child([*worker, "pull", str(size), str(c)], f"{run}/pull{i}.log", env=env)
                     for i, c in enumerate(counts)]
            pushes = [Child([*worker, "push", pull.wait_for(r"ready (\S+)", 60)[1], str(size), str(c), "--on-signal"],
                            f"{run}/push{i}.log", env=env) for i, (pull, c) in enumerate(zip(pulls, counts))]
            for push in pushes:
                push.wait_for(r"ready", 60)
            for push in pushes:
                push.popen.send_signal(signal.SIGUSR1)
            got = [json.loads(pull.wait_for(r"result (\{.*\})", self.timeout)[1]) for pull in pulls]
            sent = [json.loads(push.wait_for(r"result (\{.*\})", 60)[1]) for push in pushes]
            # NOTE: first to last message at the receivers: each pair's first message starts its clock
            wall = max(g["last"] for g in got) - min(g["first"] for g in got)
            result.files_s = (count - n) / wall / per_file
            result.mib_s = (count - n) * size / MiB / wall
            result.rss = (sum(x["peak_rss"] for x in sent), sum(x["peak_rss"] for x in got))
            result.other_cpu = others.percent()
        except (RuntimeError, TimeoutError) as exc:
            result.status = f"FAILED: {exc}"
        finally:
            stop_all()
            self.done(run, 0)
        return result


def run_all(commands: list[list[str]], cwd: str, timeout: float) -> None:
    """Run ``commands`` in parallel; raises if one fails or they take longer than ``timeout`` together."""
    procs = [subprocess.Popen(argv, cwd=cwd) for argv in commands]
    deadline = time.monotonic() + timeout
    try:
        for argv, proc in zip(commands, procs):
            if proc.wait(max(0.0, deadline - time.monotonic())) != 0:
                raise subprocess.CalledProcessError(proc.returncode, argv[:3])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- main --------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a tenth of the files in every set, one run per mode")
    p.add_argument("--workdir", metavar="DIR", help="where staging and runs go (default: a new dir under /tmp)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fsync-only", action="store_true", help="only run HiDRA with receiver.files.fsync=true")
    mode.add_argument("--no-fsync-only", action="store_true", help="only run HiDRA with receiver.files.fsync=false")
    p.add_argument("--repeat", type=int, metavar="N", help="runs per mode, median reported (default 3; --quick 1)")
    p.add_argument("--sets", help="comma-separated subset of the data sets (default: all; --scale: 4KiB,100MiB)")
    p.add_argument("--streams", type=counts, metavar="N[,N...]",
                   help="HiDRA runs with sender.streams=N, one run each (default: the sender's default)")
    p.add_argument("--receivers", type=counts, metavar="N[,N...]",
                   help="HiDRA runs with a receiver group of N workers (`hidra receiver --workers N`; default 1)")
    p.add_argument("--scale", type=counts, metavar="N[,N...]",
                   help="scaling table: for each N, HiDRA with N streams and N receivers against N raw zmq pairs "
                        "and N parallel cp + one sync (no latency runs)")
    p.add_argument("--curve", action="store_true", help="each HiDRA setup also with security.curve on, and raw zmq"
                   " with CURVE (throwaway keys made in the work dir)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    p.add_argument("--no-ballast", action="store_true", help="leave free memory free (see Ballast in _harness.py)")
    p.add_argument("--max-other", type=float, default=25.0, metavar="PCT",
                   help="a run during which other processes used more CPU (%% of one core) counts as disturbed")
    p.add_argument("--retries", type=int, default=2, help="extra attempts of a disturbed run")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before a run counts as failed")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.scale and (args.streams or args.receivers):
        p.error("--scale sets streams and receivers to each N: give it without --streams and --receivers")
    return args


def counts(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``: the values of --streams, --receivers and --scale."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if min(values) < 1 or max(values) > 64:
        raise argparse.ArgumentTypeError(f"{text!r}: each number must be between 1 and 64")
    return values


def data_sets(args: argparse.Namespace) -> list[DataSet]:
    """The sets chosen; --quick: a tenth of the files (with --scale, at least one file per stream)."""
    names = (args.sets or ("4KiB,100MiB" if args.scale else ",".join(s.name for s in SETS))).split(",")
    unknown = set(names).difference(s.name for s in SETS)
    if unknown:
        sys.exit(f"storage_path.py: unknown data set {', '.join(sorted(unknown))}; "
                 f"there are {', '.join(s.name for s in SETS)}")
    sets = [s for s in SETS if s.name in names]
    if args.quick:
        sets = [DataSet(s.name, max(1, s.count // 10, *(args.scale or [])), s.size) for s in sets]
    return sets


def setups(args: argparse.Namespace) -> list[Setup]:
    """The HiDRA setups of a run without --scale: the default, or each of --streams x --receivers."""
    if args.streams is None and args.receivers is None:
        chosen = [Setup()]
    else:
        chosen = [Setup.chosen(s, r) for s in args.streams or [None] for r in args.receivers or [1]]
    return chosen + [dataclasses.replace(setup, curve=True) for setup in chosen if args.curve]


def attempt(label: str, mode: str, run: Callable[[], list[Result]], n: int = 1) -> list[Result]:
    """Run one measurement; a failure is recorded as a result and the benchmark goes on."""
    try:
        new = run()
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        print(f"# {label} {mode} failed: {exc}", file=sys.stderr)
        lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # NOTE: one line in the table: the first line of the error and its last (a child's own error message)
        new = [Result(label, mode, status="FAILED: " + " ... ".join(dict.fromkeys([lines[0], lines[-1]])), n=n)]
        stop_all()
    for r in new:
        print(f"# {r.set}{f' N={r.n}' if r.n > 1 else ''} {r.mode}: {num(r.files_s)} files/s, {num(r.mib_s)} MiB/s"
              + ("" if r.p50_ms is None else f", p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms")
              + f", {r.status}" + (f" [CPU {r.threads}]" if r.threads else "")
              + ("" if r.other_cpu is None else f" [other processes {r.other_cpu:.0f}%]"), file=sys.stderr)
    return new


def measure(plan: dict[str, Callable[[], list[Result]]], label: str, args: argparse.Namespace,
            runs: list[Result], n: int = 1) -> None:
    """Every entry of ``plan`` ``args.repeat`` times, in rotated order, each run appended to ``runs``; a run
    during which other processes used more than ``args.max_other`` % CPU is tried again (``args.retries``)."""
    names = list(plan)
    for rep in range(args.repeat):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            for retry in range(args.retries + 1):
                new = attempt(label, name, plan[name], n)
                runs += new
                busy = max((r.other_cpu or 0 for r in new), default=0)
                if busy <= args.max_other or retry == args.retries:
                    break
                print(f"# other processes used {busy:.0f}% CPU meanwhile: once more", file=sys.stderr)
                time.sleep(5)


def throughput_plan(bench: Bench, ds: DataSet, modes: list[bool], hidra: list[Setup],
                    n: int) -> dict[str, Callable[[], list[Result]]]:
    """The runs of one data set: HiDRA in each of ``hidra`` and ``modes``, ``n`` cp and ``n`` raw zmq pairs."""
    plan = {setup.mode(m): (lambda m=m, setup=setup: [bench.hidra_throughput(ds, m, setup)])
            for setup in hidra for m in modes}
    plan["cp"] = lambda: bench.copy(ds, n)
    plan["raw zmq"] = lambda: [bench.raw_zmq(ds, n)]
    if any(setup.curve for setup in hidra):
        plan["raw zmq curve"] = lambda: [bench.raw_zmq(ds, n, curve=True)]
    return plan


def run_plans(bench: Bench, args: argparse.Namespace, modes: list[bool], runs: list[Result]) -> None:
    """Latency (not with --scale), then each data set: at each N of --scale, or once for the chosen setups."""
    if not args.no_latency and not args.scale:
        plan = {setup.mode(m): (lambda m=m, setup=setup: [bench.hidra_latency(m, setup)])
                for setup in setups(args) for m in modes}
        measure(plan, "latency", args, runs)
    for ds in data_sets(args):
        print(f"# generating {ds.count} x {ds.size} B ...", file=sys.stderr)
        generate(os.path.join(bench.staging, ds.name), ds)
        for n in args.scale or [1]:
            hidra = [Setup.scaled(n)] if args.scale else setups(args)
            measure(throughput_plan(bench, ds, modes, hidra, n), ds.name, args, runs, n)
        bench.done(os.path.join(bench.staging, ds.name), ds.count)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_sets(args)  # an unknown set name stops here, before anything runs
    labelled = bool(args.scale or args.streams or args.receivers)  # NOTE: say which machine: figures scale with it
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
          + ("" if bench.topdir else " (not a top directory: waits after deleting files)")
          + (f"\n# machine: {machine()}" if labelled else ""), file=sys.stderr)
    try:
        if bench.ballast is not None:
            print("# filling free memory with the ballast ...", file=sys.stderr)
            bench.ballast.top_up()
        run_plans(bench, args, modes, runs)
    except KeyboardInterrupt:
        print("# interrupted: the table shows the runs that finished", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not stop the clean-up half-way
            signal.signal(sig, signal.SIG_IGN)
        if runs and labelled:
            print(f"machine: {machine()}\n")
        if runs:
            print_table(medians(runs, args.max_other), args.markdown, bool(args.scale))
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
