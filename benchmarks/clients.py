"""Analysis-client benchmark: a real `hidra sender` -> `hidra receiver` pair with client processes on loopback.

    .venv/bin/python benchmarks/clients.py [--quick] [--only latency,stalled,stream,memory] [--repeat N]
                                           [--clients N] [--workdir DIR] [--timeout S] [--markdown] [--keep]

1. latency    1000 x 1 MiB (--quick: 200) written to a staging directory and renamed into the watched source at
              100 files/s (the rename is the file's "close"); one QUERY_NEXT client process keeps asking. Time
              from the start of the rename to the whole file returned by Transfer.get() in the client, and to
              the file's final name at the storage target. Files that arrive while no NEXT is open are not
              delivered (by protocol), so the fraction delivered is reported too.
2. stalled    200 x 8 MiB (--quick: 40) renamed into the source at once; time until all are at their final names
              at the storage target, with no client, and with 10 STREAM client processes (one appid each, so each
              set gets its own copy) that were SIGSTOPped after they received a warm-up file. Runs --repeat times
              (default 5, --quick 1), alternating, median reported. Sender peak RSS (VmHWM) and the clients'
              skipped counters (HIDRA_STATUS on the com port).
3. stream     the same 8 MiB files to one STREAM client (first to last arrival at the client), storage in the
              same run, and raw pyzmq PUSH/PULL of as many 8 MiB messages between two processes (_rawzmq.py).
              Runs with the receiver fsyncing (the default) and without, so the client is also seen when the
              disk is not the limit; each mode --repeat times (default 3, --quick 1), medians reported.
4. memory     what stalled clients pin in the sender: 10 STREAM clients stalled one after another, two 8 MiB
              files apart (each holds different files), and one stalled client while one 1 GiB file (--quick:
              64 MiB) is sent; sender peak RSS and the bytes queued to the clients (budget:
              sender.clients.budget_bytes each, 64 MiB by default).

The receiver fsyncs (its default) except where the table says otherwise. Every process is started on free
loopback ports, in its own session; all are stopped (SIGCONT first, for the stalled clients) and the work
directory is removed at the end, also on errors, Ctrl-C and SIGTERM. See benchmarks/RESULTS.md for figures.

Internal: ``clients.py _client MODE COM_PORT REQUEST_PORT APPID`` is one client process (see ``client_main``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _harness import (MiB, ArrivalWatcher, Child, DataSet, OtherLoad, generate, move_all,  # noqa: E402
                      percentile, set_topdir, stop_all, thread_share, warm_memory)

HIDRA = [sys.executable, "-m", "hidra_core"]
LATENCY_RATE = 100.0
STALLED_CLIENTS = 10
BIG = 8 * MiB


# -- one client process ----------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop


def client_main(mode: str, com_port: int, request_port: int, appid: str) -> int:
    """Register as ``mode`` (STREAM or QUERY_NEXT) under ``appid`` and print ``got NAME MONOTONIC SIZE`` for each
    whole file, right after ``Transfer.get`` returned it; SIGTERM unregisters and exits.

    time.monotonic() is CLOCK_MONOTONIC, one clock for every process of the machine, so the parent can compare
    these times with its own."""
    from hidra_core.client import Transfer

    signal.signal(signal.SIGTERM, _raise_stop)
    transfer = Transfer(mode, signal_host="127.0.0.1", com_port=com_port, request_port=request_port)
    got = 0
    try:
        transfer.set_appid(appid)
        socket_id = transfer.start(0)
        transfer.initiate([[socket.getfqdn(), transfer.data_port, 1]])
        print("ready", socket_id, flush=True)
        while True:
            metadata, data = transfer.get(1000)  # QUERY_NEXT: one NEXT per call (CANCEL on timeout)
            now = time.monotonic()
            if metadata is None:
                continue
            got += 1
            print("got", metadata["filename"], f"{now:.6f}", len(data) if data is not None else -1, flush=True)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        transfer.stop()
    print("stopped", got, flush=True)
    return 0


# -- the parent: processes, status, arrivals -------------------------------------------------------------------

@dataclass
class Pair:
    sender: Child
    receiver: Child
    com_port: int
    request_port: int
    run: str


@dataclass
class Row:
    part: str
    what: str
    fsync: str
    result: str
    target: str = "-"
    verdict: str = "-"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    failed: bool = False

    def add(self, *args: Any, **kw: Any) -> None:
        row = Row(*args, **kw)
        self.rows.append(row)
        print(f"# {row.part} {row.what} [{row.fsync}]: {row.result}  (target {row.target}: {row.verdict})",
              file=sys.stderr)


class ClientProc(Child):
    """A client process (``client_main``); SIGSTOP/SIGCONT, and the files it reported."""

    def __init__(self, mode: str, pair: Pair, appid: str, log_path: str) -> None:
        super().__init__([sys.executable, os.path.abspath(__file__), "_client", mode, str(pair.com_port),
                          str(pair.request_port), appid], log_path)
        self.stopped = False

    def pause(self) -> None:
        os.kill(self.popen.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGCONT)
        self.stopped = False

    def stop(self, timeout: float = 20.0) -> int | None:
        self.resume()  # a stopped process acts on SIGTERM only once it runs again
        return super().stop(timeout)

    def arrivals(self) -> dict[str, tuple[float, int]]:
        out = {}
        for match in re.finditer(r"^got (\S+) ([0-9.]+) (-?\d+)$", self.output(), re.M):
            out.setdefault(match[1], (float(match[2]), int(match[3])))
        return out

    def wait_got(self, name: str, timeout: float) -> bool:
        try:
            self.wait_for(rf"(?m)^got {re.escape(name)} ", timeout)
            return True
        except TimeoutError:
            return False


def hidra_status(com_port: int, timeout: float = 3.0) -> dict[str, Any]:
    """Registrations and per-target counters: HIDRA_STATUS on the sender's com port (REQ, bounded wait)."""
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(f"tcp://127.0.0.1:{com_port}")
        sock.send_multipart([b"", b"bench", b"HIDRA_STATUS", b"[]"])
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no HIDRA_STATUS reply within {timeout:g} s")
        reply = sock.recv_multipart()
        if reply[0] != b"HIDRA_STATUS":
            raise RuntimeError(f"HIDRA_STATUS refused: {reply!r}")
        return json.loads(reply[1])
    finally:
        sock.close(0)


def start_pair(run: str, fsync: bool) -> Pair:
    for sub in ("source", "target", "state", "staging"):
        os.makedirs(os.path.join(run, sub), exist_ok=True)
    receiver = Child([*HIDRA, "receiver", "--set", f"receiver.target={run}/target",
                      "--set", "receiver.data=tcp://127.0.0.1:0", "--set", "receiver.confirmations=tcp://127.0.0.1:0",
                      "--set", "receiver.status=tcp://127.0.0.1:0", "--set", "receiver.rest.address=127.0.0.1:0",
                      *([] if fsync else ["--set", "receiver.files.fsync=false"])], f"{run}/receiver.log")
    ready = receiver.wait_for(r"hidra receiver ready: data (\S+), confirmations (\S+),", 60)
    sender = Child([*HIDRA, "sender", "--set", f"sender.source.inotify.path={run}/source",
                    "--set", f"sender.storage.data={ready[1]}", "--set", f"sender.storage.confirmations={ready[2]}",
                    "--set", "sender.clients.com=tcp://127.0.0.1:0", "--set", "sender.clients.request=tcp://127.0.0.1:0",
                    "--set", "sender.rest.address=127.0.0.1:0",
                    "--set", f"sender.ledger.path={run}/state/ledger.sqlite",
                    *(arg for kv in SENDER_SETS for arg in ("--set", kv))], f"{run}/sender.log")
    ports = sender.wait_for(r"hidra sender ready: .*com tcp://[^:]+:(\d+), request tcp://[^:]+:(\d+)", 60)
    sender.wait_for(r"storage receiver is up", 60)
    return Pair(sender, receiver, int(ports[1]), int(ports[2]), run)


def stop_pair(pair: Pair, report: Report) -> None:
    for who, child in (("sender", pair.sender), ("receiver", pair.receiver)):
        if child.stop() != 0:
            report.notes.append(f"{who} of {os.path.basename(pair.run)} exited with {child.popen.returncode}")


def start_clients(pair: Pair, mode: str, count: int, label: str) -> list[ClientProc]:
    clients = [ClientProc(mode, pair, f"{label}-{i}", f"{pair.run}/client-{label}-{i}.log") for i in range(count)]
    for client in clients:
        client.wait_for(r"(?m)^ready (\S+)$", 60)
    return clients


def warm_up(pair: Pair, clients: list[ClientProc], size: int, timeout: float) -> None:
    """Rename small files into the source until every client got one (its data connection is up)."""
    deadline, n = time.monotonic() + timeout, 0
    waiting = list(clients)
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} of {len(clients)} clients got no warm-up file in {timeout:.0f} s")
        name = f"warmup-{n:03d}.bin"
        n += 1
        with open(f"{pair.run}/staging/{name}", "wb") as out:
            out.write(os.urandom(size))
        os.rename(f"{pair.run}/staging/{name}", f"{pair.run}/source/{name}")
        until = min(deadline, time.monotonic() + 2.0)
        while waiting and time.monotonic() < until:
            waiting = [c for c in waiting if not any(k.startswith("warmup-") for k in c.arrivals())]
            time.sleep(0.02)


def stop_clients(clients: list[ClientProc]) -> None:
    for client in clients:
        client.resume()
    for client in clients:
        try:
            client.stop(timeout=10)
        except Exception:  # keep going: every other client must still be stopped
            pass


def cpu_sample(*children: Child) -> list[tuple[float, dict[str, float]]]:
    return [(c.cpu_seconds(), c.thread_cpu()) for c in children]


def cpu_account(who: tuple[str, ...], before: list, after: list, wall: float) -> tuple[str, str]:
    """("12% / 34%", "sender: main 10%, ZMQbg/IO/0 2%; receiver: ...") between two ``cpu_sample``s."""
    pcts = " / ".join(f"{100 * (a[0] - b[0]) / wall:.0f}%" for a, b in zip(after, before))
    threads = "; ".join(f"{name}: {thread_share(b[1], a[1], wall)}" for name, a, b in zip(who, after, before))
    return pcts, threads


def stats_ms(values: list[float]) -> str:
    if not values:
        return "-"
    return " / ".join(f"{percentile(values, p):.1f}" for p in (50, 95, 99)) + f" / {max(values):.1f}"


def mib(n: int | None) -> str:
    return "?" if n is None else f"{n / MiB:.0f}"


SENDER_SETS: list[str] = []  # --sender-set: extra sender config, e.g. sender.clients.budget_bytes=67108864
KEEP = False  # --keep: leave every run directory (logs, target) for inspection


def remove(run: str) -> None:
    if not KEEP:
        shutil.rmtree(run, ignore_errors=True)


# -- 1. latency to a QUERY_NEXT client -------------------------------------------------------------------------

def bench_latency(work: str, count: int, timeout: float, report: Report) -> None:
    run = os.path.join(work, "latency")
    os.makedirs(run)
    names = [f"lat{i:05d}.bin" for i in range(count)]
    os.sync()
    pair = start_pair(run, fsync=True)
    clients: list[ClientProc] = []
    watcher = ArrivalWatcher(f"{run}/target", names)
    watcher.start()
    try:
        clients = start_clients(pair, "QUERY_NEXT", 1, "query")
        warm_up(pair, clients, MiB, 30)
        warm_memory(3 * count * MiB)
        closed: dict[str, float] = {}
        procs = (pair.sender, pair.receiver, clients[0])
        cpu0 = cpu_sample(*procs)
        others, start = OtherLoad(), time.monotonic()
        late, rename_ms = 0, []
        for i, name in enumerate(names):
            data = os.urandom(MiB)
            due = start + i / LATENCY_RATE
            if time.monotonic() > due + 0.005:
                late += 1
            time.sleep(max(0.0, due - time.monotonic()))
            with open(f"{run}/staging/{name}", "wb") as out:
                out.write(data)
            # NOTE: stamped *before* the rename: on 2 cores the sender and the client, woken by the rename's
            # inotify event, often run before this process returns from it, so a stamp taken after it could
            # be later than the arrival. The rename itself takes some 10 us.
            closed[name] = before = time.monotonic()
            os.rename(f"{run}/staging/{name}", f"{run}/source/{name}")
            rename_ms.append(1000 * (time.monotonic() - before))
        complete = watcher.wait(timeout)
        wall = time.monotonic() - start
        cpus, threads = cpu_account(("sender", "receiver", "client"), cpu0, cpu_sample(*procs), wall)
        other = others.percent()
        time.sleep(1.0)  # the client gets a file right after storage does; let the last ones arrive
        got = clients[0].arrivals()
        client_ms = [1000 * (got[n][0] - closed[n]) for n in names if n in got]
        storage_ms = [1000 * (watcher.arrivals[n] - closed[n]) for n in names if n in watcher.arrivals]
        wrong = [n for n in names if n in got and got[n][1] != MiB]
        p50 = percentile(client_ms, 50) if client_ms else None
        p99 = percentile(client_ms, 99) if client_ms else None
        ok = p50 is not None and p50 <= 5 and p99 <= 20
        label = f"{count} x 1 MiB at {LATENCY_RATE:.0f}/s"
        report.add("1", f"QUERY_NEXT client latency, {label}: p50 / p95 / p99 / max ms", "on",
                   stats_ms(client_ms), "p50 <= 5, p99 <= 20", "met" if ok else "MISSED")
        report.add("1", "files delivered to the QUERY_NEXT client", "on",
                   f"{len(client_ms)} of {count} ({100 * len(client_ms) / count:.1f}%)"
                   + (f"; {len(wrong)} of wrong size" if wrong else ""))
        report.add("1", "storage latency (rename -> final name at target): p50 / p95 / p99 / max ms", "on",
                   stats_ms(storage_ms) + ("" if complete else f"; only {len(storage_ms)}/{count} stored"))
        report.add("1", "CPU sender / receiver / client; other processes", "on",
                   f"{cpus}; {other:.0f}% (100% = one core)")
        report.threads.append(f"latency: {threads}")
        if late:
            report.notes.append(f"latency: {late} of {count} renames were more than 5 ms behind schedule")
        report.notes.append(f"latency: the rename (file close) returned to the writer after p50 "
                            f"{percentile(rename_ms, 50):.2f} / p99 {percentile(rename_ms, 99):.2f} / max "
                            f"{max(rename_ms):.2f} ms (time the woken sender/client ran first); latencies are "
                            f"counted from the start of the rename")
        if not complete or wrong:
            report.failed = True
    finally:
        watcher.close()
        stop_clients(clients)
        stop_pair(pair, report)
        remove(run)


# -- 2. storage throughput with stalled clients ----------------------------------------------------------------

@dataclass
class StorageRun:
    mode: str
    mib_s: float | None = None
    sender_rss: int | None = None
    receiver_rss: int | None = None
    cpu: str = ""
    skipped: list[int] = field(default_factory=list)
    abandoned: list[int] = field(default_factory=list)
    files: list[int] = field(default_factory=list)
    connected_before: int = 0
    connected: int = 0
    queued: int = 0
    sender_cpu_s: float | None = None
    status: str = "ok"
    threads: str = ""


def storage_run(work: str, staged: str, ds: DataSet, stalled: int, timeout: float, tag: str) -> StorageRun:
    result = StorageRun("stalled" if stalled else "none")
    run = os.path.join(work, tag)
    os.makedirs(run)
    names = ds.names()
    os.sync()
    pair = start_pair(run, fsync=True)
    clients: list[ClientProc] = []
    watcher = ArrivalWatcher(f"{run}/target", names)
    watcher.start()
    moved = False
    try:
        if stalled:
            clients = start_clients(pair, "STREAM", stalled, "stalled")
            warm_up(pair, clients, MiB, 30)
        warm_memory(int(2.5 * ds.total))
        os.sync()
        if stalled:
            # NOTE: the files go in right after the stall. An idle stalled client misses the ZMTP heartbeats and
            # is disconnected after sender heartbeat_timeout_ms (5 s), after which it costs nothing; the case
            # to measure is the one where the stalled clients are still connected and take their budget.
            for client in clients:
                client.pause()
            targets = hidra_status(pair.com_port)["targets"]
            result.connected_before = sum(1 for t in targets if t["connected"])
        cpu0 = cpu_sample(pair.sender, pair.receiver)
        start = time.monotonic()
        move_all(names, staged, f"{run}/source")
        moved = True
        complete = watcher.wait(timeout)
        end = max(watcher.arrivals.values()) if complete else time.monotonic()
        cpu1 = cpu_sample(pair.sender, pair.receiver)
        result.cpu, result.threads = cpu_account(("sender", "receiver"), cpu0, cpu1, end - start)
        result.sender_cpu_s = cpu1[0][0] - cpu0[0][0]
        if complete:
            result.mib_s = ds.total / MiB / (end - start)
        else:
            result.status = f"FAILED: {len(watcher.arrivals)}/{ds.count} stored after {timeout:.0f} s"
        if stalled:
            targets = hidra_status(pair.com_port)["targets"]
            result.skipped = [t["skipped"] for t in targets]
            result.abandoned = [t["abandoned"] for t in targets]
            result.files = [t["files"] for t in targets]
            result.queued = sum(t["queued_bytes"] for t in targets)
            result.connected = sum(1 for t in targets if t["connected"])
        result.sender_rss, result.receiver_rss = pair.sender.peak_rss(), pair.receiver.peak_rss()
    finally:
        _tear_down(watcher, clients, pair, moved, names, run, staged)
    print(f"# stalled-clients run {tag}: {result}", file=sys.stderr)
    return result


def bench_stalled(work: str, staged: str, ds: DataSet, repeat: int, nclients: int, timeout: float,
                  report: Report) -> None:
    runs: dict[str, list[StorageRun]] = {"none": [], "stalled": []}
    for rep in range(repeat):
        order = ["none", "stalled"] if rep % 2 == 0 else ["stalled", "none"]
        for mode in order:
            runs[mode].append(storage_run(work, staged, ds, nclients if mode == "stalled" else 0, timeout,
                                          f"storage-{rep}-{mode}"))
    label = f"{ds.count} x 8 MiB"
    medians: dict[str, float | None] = {}
    cpu_s: dict[str, float | None] = {}
    for mode, what in (("none", "no client"), ("stalled", f"{nclients} stalled STREAM clients")):
        ok = [r for r in runs[mode] if r.mib_s is not None]
        failed = [r.status for r in runs[mode] if r.mib_s is None]
        medians[mode] = statistics.median(r.mib_s for r in ok) if ok else None
        cpu_s[mode] = statistics.median(r.sender_cpu_s for r in ok) if ok else None
        spread = ", ".join(f"{r.mib_s:.0f}" for r in ok)
        report.add("2", f"storage MiB/s, {label}, {what}: median (each run)", "on",
                   (f"{medians[mode]:.0f} ({spread})" if ok else "-") + ("; " + "; ".join(failed) if failed else ""))
        if failed:
            report.failed = True
        report.threads += [f"storage {mode} run {i}: {r.threads}" for i, r in enumerate(runs[mode]) if r.threads]
    if medians["none"] and medians["stalled"]:
        ratio = medians["stalled"] / medians["none"]
        report.add("2", "ratio stalled / none (medians)", "on", f"{ratio:.2f}", ">= 0.90",
                   "met" if ratio >= 0.9 else "MISSED")
    if cpu_s["none"] and cpu_s["stalled"]:
        report.add("2", "sender CPU seconds for the whole set: stalled / none (medians; noise-free cost)", "on",
                   f"{cpu_s['stalled']:.2f} / {cpu_s['none']:.2f} s ({cpu_s['stalled'] / cpu_s['none']:.2f}x)")
    rss = [r.sender_rss for r in runs["stalled"] if r.sender_rss]
    rss_none = [r.sender_rss for r in runs["none"] if r.sender_rss]
    rcv = [r.receiver_rss for r in runs["stalled"] + runs["none"] if r.receiver_rss]
    if rss:
        report.add("2", "sender peak RSS (VmHWM, highest run), stalled clients / no client; receiver", "on",
                   f"{mib(max(rss))} / {mib(max(rss_none) if rss_none else None)} MiB; receiver "
                   f"{mib(max(rcv) if rcv else None)} MiB", "< 200 MiB", "met" if max(rss) < 200 * MiB else "MISSED")
    stalled = [r for r in runs["stalled"] if r.skipped]
    if stalled:
        skipped = [n for r in stalled for n in r.skipped]
        files = [n for r in stalled for n in r.files]
        report.add("2", "stalled clients (HIDRA_STATUS, all runs): skipped, files sent (incl. warm-up), abandoned, "
                   "queued at the end, connected before / after", "on",
                   f"skipped {min(skipped)}-{max(skipped)} of {ds.count} per client, files {min(files)}-{max(files)}, "
                   f"abandoned {sum(n for r in stalled for n in r.abandoned)}, queued "
                   f"{min(r.queued for r in stalled) / MiB:.0f}-{max(r.queued for r in stalled) / MiB:.0f} MiB in all; "
                   f"connected {'/'.join(str(r.connected_before) for r in stalled)} before, "
                   f"{'/'.join(str(r.connected) for r in stalled)} after (of {nclients})")


# -- 3. throughput to one STREAM client vs raw zmq ---------------------------------------------------------------

@dataclass
class StreamRun:
    fsync: bool
    client_mib_s: float | None = None  # first -> last arrival at the client, files it got
    got: int = 0
    skipped: Any = "?"
    storage_mib_s: float | None = None  # rename -> last file stored
    cpu: str = ""
    threads: str = ""
    sender_rss: int | None = None
    status: str = "ok"


def stream_run(work: str, staged: str, ds: DataSet, fsync: bool, timeout: float, tag: str) -> StreamRun:
    result = StreamRun(fsync)
    run = os.path.join(work, tag)
    os.makedirs(run)
    names = ds.names()
    os.sync()
    pair = start_pair(run, fsync)
    clients: list[ClientProc] = []
    watcher = ArrivalWatcher(f"{run}/target", names)
    watcher.start()
    moved = False
    try:
        clients = start_clients(pair, "STREAM", 1, "stream")
        warm_up(pair, clients, MiB, 30)
        warm_memory(int(2.5 * ds.total))
        os.sync()
        procs = (pair.sender, pair.receiver, clients[0])
        cpu0 = cpu_sample(*procs)
        start = time.monotonic()
        move_all(names, staged, f"{run}/source")
        moved = True
        complete = watcher.wait(timeout)
        # The client may lag behind storage: wait until it has every file, or nothing is queued for it any
        # more and nothing new arrived for a second (the files it lacks were skipped).
        wanted, deadline = set(names), time.monotonic() + 30
        seen, changed, cpu1 = -1, time.monotonic(), cpu0
        while time.monotonic() < deadline:
            got = {n: v for n, v in clients[0].arrivals().items() if n in wanted}
            now = time.monotonic()
            if len(got) != seen:
                seen, changed = len(got), now
                cpu1 = cpu_sample(*procs)
            if len(got) == len(wanted):
                break
            if now - changed > 1.0:
                queued = sum(t["queued_messages"] for t in hidra_status(pair.com_port)["targets"])
                if queued == 0:
                    break
            time.sleep(0.05)
        ends = [*watcher.arrivals.values(), *(t for t, _size in got.values())]
        if KEEP:
            with open(f"{run}/timeline.json", "w") as out:
                json.dump({"start": start, "storage": watcher.arrivals, "client": got}, out, indent=1)
        wall = max(ends) - start if ends else time.monotonic() - start
        result.cpu, result.threads = cpu_account(("sender", "receiver", "client"), cpu0, cpu1, wall)
        result.skipped = next(iter(hidra_status(pair.com_port)["targets"]), {}).get("skipped", "?")
        result.sender_rss = pair.sender.peak_rss()
        result.got = len(got)
        if len(got) >= 2:
            times = sorted(t for t, _size in got.values())
            result.client_mib_s = (len(times) - 1) * ds.size / MiB / (times[-1] - times[0])
        wrong = sum(1 for _t, size in got.values() if size != ds.size)
        if complete:
            result.storage_mib_s = ds.total / MiB / (max(watcher.arrivals.values()) - start)
        else:
            result.status = f"FAILED: {len(watcher.arrivals)}/{ds.count} stored after {timeout:.0f} s"
        if wrong:
            result.status = f"FAILED: {wrong} files of the wrong size at the client"
    finally:
        _tear_down(watcher, clients, pair, moved, names, run, staged)
    print(f"# stream run {tag}: {result}", file=sys.stderr)
    return result


def _tear_down(watcher: Any, clients: list[Any], pair: Any, moved: bool, names: list[str], run: str,
               staged: str) -> None:
    """Stop the watcher, the clients and the pair, put the staged files back and remove the run dir."""
    watcher.close()
    stop_clients(clients)
    for child in (pair.sender, pair.receiver):
        child.stop()
    if moved:
        move_all(names, f"{run}/source", staged)
    remove(run)


def raw_zmq(work: str, ds: DataSet, timeout: float) -> float:
    """First to last message at the PULL side, as for the client."""
    run = os.path.join(work, "rawzmq")
    os.makedirs(run)
    worker = [sys.executable, os.path.join(HERE, "_rawzmq.py")]
    warm_memory(int(2.5 * ds.total))
    pull = Child([*worker, "pull", str(ds.size), str(ds.count)], f"{run}/pull.log")
    push = None
    try:
        endpoint = pull.wait_for(r"ready (\S+)", 60)[1]
        push = Child([*worker, "push", endpoint, str(ds.size), str(ds.count)], f"{run}/push.log")
        got = json.loads(pull.wait_for(r"result (\{.*\})", timeout)[1])
        push.wait_for(r"result (\{.*\})", 60)
        return (ds.count - 1) * ds.size / MiB / (got["last"] - got["first"])
    finally:
        for child in (push, pull):
            if child is not None:
                child.stop()
        remove(run)


def bench_streams(work: str, staged: str, ds: DataSet, repeat: int, timeout: float, report: Report) -> None:
    runs: dict[str, list[Any]] = {"on": [], "off": [], "raw": []}
    for rep in range(repeat):
        modes = ["on", "off", "raw"]
        for mode in modes[rep % 3:] + modes[:rep % 3]:
            if mode == "raw":
                runs[mode].append(raw_zmq(work, ds, timeout))
            else:
                runs[mode].append(stream_run(work, staged, ds, mode == "on", timeout, f"stream-{rep}-{mode}"))
    raw = statistics.median(runs["raw"])

    def med(values: list[float | None]) -> str:
        ok = [v for v in values if v is not None]
        return f"{statistics.median(ok):.0f} ({', '.join(f'{v:.0f}' for v in ok)})" if ok else "-"

    for fs in ("on", "off"):
        rr = runs[fs]
        failed = [r.status for r in rr if r.status != "ok"]
        if failed:
            report.failed = True
        report.add("3", f"one STREAM client, {ds.count} x 8 MiB: MiB/s first -> last arrival at the client, median "
                   "(each run)", fs, med([r.client_mib_s for r in rr]) + ("; " + "; ".join(failed) if failed else ""))
        report.add("3", "files the client got (skipped by the sender's client budget)", fs,
                   ", ".join(f"{r.got} ({r.skipped})" for r in rr) + f" of {ds.count}")
        report.add("3", "storage in the same runs: MiB/s rename -> last stored, median (each run)", fs,
                   med([r.storage_mib_s for r in rr]) + f"; CPU snd/rcv/client {', '.join(r.cpu for r in rr)}; "
                   f"sender peak RSS {mib(max((r.sender_rss or 0) for r in rr))} MiB")
        report.threads += [f"stream fsync {fs} run {i}: {r.threads}" for i, r in enumerate(rr) if r.threads]
    report.add("3", f"raw pyzmq PUSH/PULL, {ds.count} x 8 MiB messages, first -> last arrival, median (each run)", "-",
               med(runs["raw"]))
    for fs in ("on", "off"):
        rates = [r.client_mib_s for r in runs[fs] if r.client_mib_s is not None]
        if rates:
            report.add("3", "ratio client / raw zmq (medians)", fs, f"{statistics.median(rates) / raw:.2f}")


# -- 4. what stalled clients pin in the sender's memory --------------------------------------------------------

def write_file(run: str, name: str, size: int) -> None:
    """``size`` random bytes written to the staging directory, then renamed into the source."""
    with open(f"{run}/staging/{name}", "wb") as out:
        left = size
        while left:
            piece = min(left, 8 * MiB)
            out.write(os.urandom(piece))
            left -= piece
    os.rename(f"{run}/staging/{name}", f"{run}/source/{name}")


def bench_staggered(work: str, nclients: int, timeout: float, report: Report) -> None:
    """Clients stalled one after another, two 8 MiB files apart: each pins the files sent after its stall."""
    run = os.path.join(work, "staggered")
    os.makedirs(run)
    os.sync()
    pair = start_pair(run, fsync=True)
    clients: list[ClientProc] = []
    try:
        clients = start_clients(pair, "STREAM", nclients, "staggered")
        warm_up(pair, clients, MiB, 30)
        base = pair.sender.peak_rss()
        for i, client in enumerate(clients + [None]):
            names = [f"stagger-{i:02d}-{j}.bin" for j in range(2)]
            for name in names:
                write_file(run, name, BIG)
            if client is None:  # two more files for the last client stalled
                break
            client.wait_got(names[-1], 3.0)  # it may have been skipped (budget): then stall it anyway
            client.pause()
            if i == 0:
                first_stall = time.monotonic()
        spent = time.monotonic() - first_stall
        time.sleep(0.5)  # let the sender admit and queue what it will
        targets = hidra_status(pair.com_port)["targets"]
        queued = [t["queued_bytes"] for t in targets]
        rss = pair.sender.peak_rss()
        report.add("4", f"sender peak RSS, {nclients} STREAM clients stalled one after another (2 x 8 MiB apart)",
                   "on", f"{mib(rss)} MiB (after warm-up {mib(base)}); queued to the stalled clients "
                   f"{sum(queued) / MiB:.0f} MiB in all, {max(queued) / MiB:.0f} MiB at most per client, "
                   f"{sum(1 for t in targets if t['connected'])} connected; {spent:.1f} s from first to last stall",
                   "< 200 MiB", "met" if rss is not None and rss < 200 * MiB else "MISSED")
    finally:
        stop_clients(clients)
        stop_pair(pair, report)
        remove(run)


def bench_large_file(work: str, size: int, timeout: float, report: Report) -> None:
    """One STREAM client stalled, then one file far larger than the client budget (sender.clients.budget_bytes)."""
    run = os.path.join(work, "largefile")
    os.makedirs(run)
    os.sync()
    pair = start_pair(run, fsync=True)
    clients: list[ClientProc] = []
    watcher = ArrivalWatcher(f"{run}/target", ["large.bin"])
    watcher.start()
    try:
        clients = start_clients(pair, "STREAM", 1, "large")
        warm_up(pair, clients, MiB, 30)
        clients[0].pause()
        base = pair.sender.peak_rss()
        start = time.monotonic()
        write_file(run, "large.bin", size)
        stored = watcher.wait(timeout)
        wall = time.monotonic() - start
        time.sleep(1.0)
        target = hidra_status(pair.com_port)["targets"][0]
        rss = pair.sender.peak_rss()
        report.add("4", f"sender peak RSS, one stalled STREAM client, one {size // MiB} MiB file", "on",
                   f"{mib(rss)} MiB (after warm-up {mib(base)}); queued to the client"
                   f" {target['queued_bytes'] / MiB:.0f} MiB (budget: sender.clients.budget_bytes);"
                   f" stored {'yes' if stored else 'NO'} in {wall:.1f} s "
                   f"(write + rename + store)", "< 200 MiB", "met" if rss is not None and rss < 200 * MiB else "MISSED")
        if not stored:
            report.failed = True
    finally:
        watcher.close()
        stop_clients(clients)
        stop_pair(pair, report)
        remove(run)


# -- report ------------------------------------------------------------------------------------------------------

def machine_facts(work: str) -> list[str]:
    import zmq

    real = os.path.realpath(work)
    best = ("?", "?", "?", "")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            dev, point, fstype, opts = line.split()[:4]
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[1]):
                best = (dev, point, fstype, opts)
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return [f"nproc {len(os.sched_getaffinity(0))} ({model}), {total // 1024} MiB RAM, Linux {platform.release()}",
            f"python {platform.python_version()}, pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}",
            f"work dir {work}: {best[2]} on {best[0]} mounted at {best[1]} ({best[3]})"]


def print_table(report: Report, facts: list[str], markdown: bool) -> None:
    head = ["#", "measurement", "fsync", "result", "target", "verdict"]
    table = [[r.part, r.what, r.fsync, r.result, r.target, r.verdict] for r in report.rows]
    print("\n".join(facts))
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    for row in [head, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for note in report.notes:
        print(f"note: {note}")
    if report.threads:
        print("CPU per thread (% of one core; main = router / receive loop, ZMQbg/IO = libzmq I/O thread, "
              "py-N = source or commit thread):")
        print("\n".join(f"  {line}" for line in report.threads))
    if markdown:
        print("\n| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for row in table:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")


# -- main --------------------------------------------------------------------------------------------------------

PARTS = ("latency", "stalled", "stream", "memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="200 latency files, 40 x 8 MiB, one run per mode, a 64 MiB "
                   "large file")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--repeat", type=int, metavar="N", help="runs per mode of parts 2 and 3, in rotated order "
                   "(default 5 for part 2 and 3 for part 3; --quick 1)")
    p.add_argument("--latency-files", type=int, metavar="N", help="files of part 1 (default 1000; --quick 200)")
    p.add_argument("--big-files", type=int, metavar="N", help="8 MiB files of parts 2-3 (default 200; --quick 40)")
    p.add_argument("--clients", type=int, default=10, metavar="N", help="stalled clients of parts 2 and 4 "
                   "(default 10)")
    p.add_argument("--large-file", type=int, metavar="MiB", help="file size of part 4 (default 1024; --quick 64)")
    p.add_argument("--sender-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra `--set` for every sender (what-if runs; the table header names them)")
    p.add_argument("--workdir", metavar="DIR", help="where the work directory goes (default: under /tmp)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a run may take before it counts as failed")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def attempt(report: Report, label: str, run: Callable[[], None]) -> None:
    try:
        run()
    except Exception as exc:  # recorded; the other parts still run
        traceback.print_exc()
        report.add("!", label, "-", f"FAILED: {type(exc).__name__}: {exc}")
        report.failed = True
        stop_all()


def main(argv: list[str] | None = None) -> int:
    global KEEP
    args = parse_args(argv)
    KEEP = args.keep
    SENDER_SETS[:] = args.sender_set
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        sys.exit(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    lat_files = args.latency_files or (200 if args.quick else 1000)
    big = DataSet("8MiB", args.big_files or (40 if args.quick else 200), BIG)
    repeat = args.repeat or (1 if args.quick else 5)
    stream_repeat = args.repeat or (1 if args.quick else 3)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="hidra-clients-", dir=args.workdir)
    set_topdir(work)  # each run's directory in a block group of its own (see benchmarks/README.md, ext4)
    signal.signal(signal.SIGTERM, _interrupt)
    report, facts = Report(), machine_facts(work)
    if SENDER_SETS:
        facts.append(f"sender config changed: {', '.join(SENDER_SETS)}")
    print(f"# {datetime.now().isoformat(timespec='seconds')}  work dir {work}", file=sys.stderr)
    try:
        if "latency" in parts:
            attempt(report, "latency", lambda: bench_latency(work, lat_files, args.timeout, report))
        if "stalled" in parts or "stream" in parts:
            staged = os.path.join(work, "staging-8MiB")
            print(f"# generating {big.count} x 8 MiB ...", file=sys.stderr)
            generate(staged, big)
            if "stalled" in parts:
                attempt(report, "stalled clients", lambda: bench_stalled(work, staged, big, repeat, args.clients,
                                                                         args.timeout, report))
            if "stream" in parts:
                attempt(report, "stream client", lambda: bench_streams(work, staged, big, stream_repeat, args.timeout,
                                                                      report))
            remove(staged)
        if "memory" in parts:
            attempt(report, "staggered stalls", lambda: bench_staggered(work, args.clients, args.timeout, report))
            large = (args.large_file or (64 if args.quick else 1024)) * MiB
            attempt(report, "large file", lambda: bench_large_file(work, large, args.timeout, report))
    except KeyboardInterrupt:
        print("# interrupted", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if args.keep:
            print(f"# kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
        print_table(report, facts, args.markdown)
    return 1 if report.failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_client"] and len(sys.argv) == 6:
        sys.exit(client_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
    sys.exit(main())
