"""Analysis clients end to end: a stalled client, a killed worker, and QUERY_NEXT workers sharing files."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from conftest import LAYOUTS
from hidra_proc import content, intact, tree, wait_until, write_file

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
ME = socket.getfqdn()


class Worker:
    def __init__(self, base: Path, name: str, com: str, request: str, mode: str, register: bool) -> None:
        self.out = base / name
        self.out.mkdir()
        args = [sys.executable, str(HERE / "client_proc.py"), "--com", com, "--request", request, "--mode", mode,
                "--out", str(self.out), "--outstanding", "10"]
        self.proc = subprocess.Popen([*args, *(["--register"] if register else [])], stdout=subprocess.PIPE,
                                     stdin=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), line
        self.port = int(line.split()[1])
        self.socket_id = f"{ME}:{self.port}"

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def files(self) -> dict[str, int]:
        return {k: v for k, v in tree(self.out).items() if not k.endswith(".tmp")}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Com:
    """The test's own REQ connection to the sender's com port."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def ask(self, signal_name: str, targets: list, appid: str = "test") -> list[bytes]:
        self.sock.send_multipart([b"4.4.3", appid.encode(), signal_name.encode(), json.dumps(targets).encode()])
        assert self.sock.poll(2000), f"no reply to {signal_name} within 2 s"
        return self.sock.recv_multipart()

    def status(self) -> dict:
        return json.loads(self.ask("HIDRA_STATUS", [])[1])

    def target(self, socket_id: str) -> dict | None:
        return next((t for t in self.status()["targets"] if t["id"] == socket_id.lower()), None)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def clients_path(storage_path, request):
    pair = storage_path
    pair.start_receiver()
    extra = getattr(request, "param", [])
    sender = pair.start_sender(*extra)
    m = re.search(r"com (\S+), request (\S+),", sender.text())
    pair.com_endpoint, pair.request_endpoint = m.group(1), m.group(2)
    pair.com = Com(pair.com_endpoint)
    pair.workers = []
    try:
        yield pair
    finally:
        for w in pair.workers:
            w.stop()
        pair.com.close()


def _worker(pair, name: str, mode: str = "stream", register: bool = True) -> Worker:
    w = Worker(pair.base, name, pair.com_endpoint, pair.request_endpoint, mode, register)
    pair.workers.append(w)
    return w


def _connected(pair, worker: Worker) -> bool:
    t = pair.com.target(worker.socket_id)
    return bool(t and t["connected"])


@pytest.mark.parametrize("clients_path", [["sender.clients.budget_bytes=262144", "sender.clients.budget_messages=64",
                                           "sender.transports.tcp.heartbeat_timeout_ms=2000",
                                           "sender.clients.stall_timeout_s=2", "sender.chunksize=65536"]],
                         indirect=True)
def test_stalled_stream_client_never_slows_storage_and_resumes(clients_path):
    pair = clients_path
    worker = _worker(pair, "stalled")
    wait_until(lambda: _connected(pair, worker), 20, "the client's connection")
    write_file(pair.source / "warmup.dat", 1000)
    wait_until(lambda: worker.files().get("warmup.dat") == 1000, 20, "the client's first file")

    worker.proc.send_signal(signal.SIGSTOP)
    expected = {"burst/big.dat": 4 * 2**20}  # 64 chunks, far over the client's budget: cut off mid-file
    expected.update({f"burst/{i:03d}.dat": 40_000 + i for i in range(500)})
    for rel, size in expected.items():
        write_file(pair.source / rel, size)
    wait_until(lambda: all(intact(pair.target, r, s) for r, s in expected.items()), 120, "storage of all 500 files")
    stats = pair.com.target(worker.socket_id)
    assert stats["skipped"] > 0, stats
    assert stats["queued_bytes"] <= 262144 + 65536, stats  # never more than its budget plus one chunk
    # No progress for stall_timeout_s: its queue is dropped (memory freed) and it is reconnected.
    stats = wait_until(lambda: (t := pair.com.target(worker.socket_id)) and t["cut_off"] >= 1 and t, 30,
                       "the stalled client's queue to be dropped")
    assert stats["queued_bytes"] == 0  # the pinned chunks were released

    worker.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: _connected(pair, worker), 30, "the client's reconnection after SIGCONT")
    write_file(pair.source / "after.dat", 777)
    wait_until(lambda: worker.files().get("after.dat") == 777, 30, "a file after the client resumed")
    for rel, size in worker.files().items():  # whatever it got is whole
        assert (worker.out / rel).read_bytes() == content(Path(rel).name, size), rel


@pytest.mark.parametrize("clients_path", [["sender.clients.registration_ttl_s=2"]], indirect=True)
def test_killed_stream_worker_expires_and_its_share_goes_to_the_others(clients_path):
    pair = clients_path
    a, b = _worker(pair, "a", register=False), _worker(pair, "b", register=False)
    assert pair.com.ask("START_STREAM", [[a.socket_id, 1, ".*"], [b.socket_id, 1, ".*"]]) == [b"START_STREAM"]
    wait_until(lambda: _connected(pair, a) and _connected(pair, b), 20, "both workers connected")
    first = {f"first/{i}.dat": 100 + i for i in range(10)}
    for rel, size in first.items():
        write_file(pair.source / rel, size)
    wait_until(lambda: len(a.files()) + len(b.files()) == 10, 30, "the first 10 files shared")
    assert len(a.files()) == len(b.files()) == 5  # round-robin

    a.proc.kill()  # no STOP
    a.proc.wait()
    wait_until(lambda: not _connected(pair, a), 20, "the dead worker's disconnection")
    later = {f"later/{i}.dat": 200 + i for i in range(20)}
    for rel, size in later.items():
        write_file(pair.source / rel, size)
    wait_until(lambda: all(rel in b.files() for rel in later), 30, "every later file at the live worker")
    wait_until(lambda: pair.com.target(a.socket_id) is None, 20, "the dead worker's expiry")
    status = pair.com.status()
    assert status["expired"] >= 1
    assert [r["members"] for r in status["registrations"]] == [[b.socket_id.lower()]]
    assert "expired client registrations" in pair.sender.text()


@pytest.mark.parametrize("storage_path", LAYOUTS, indirect=True)
def test_three_query_next_workers_share_300_files_each_exactly_once(clients_path):
    pair = clients_path
    # Files are never kept for later NEXTs (§5.3): each worker keeps 10 requests open, as a 4.x client's
    # per-chunk NEXTs would, so a worker busy for a moment does not make a file go to nobody.
    workers = [_worker(pair, f"q{i}", mode="query", register=False) for i in range(3)]
    assert pair.com.ask("START_QUERY_NEXT", [[w.socket_id, 1, ".*"] for w in workers]) == [b"START_QUERY_NEXT"]
    for w in workers:
        w.go()
    wait_until(lambda: sum(s["open_requests"] for s in pair.com.status()["registrations"]) == 30, 20,
               "30 open requests")
    expected = {f"steady/{i:03d}.dat": 5_000 + i * 10 for i in range(300)}
    started = time.monotonic()
    for n, (rel, size) in enumerate(expected.items()):
        write_file(pair.source / rel, size)
        while time.monotonic() < started + (n + 1) / 100:  # a steady 100 files/s, as a detector would
            time.sleep(0.001)
    wait_until(lambda: sum(len(w.files()) for w in workers) == 300, 60, "300 files over the workers")
    delivered: dict[str, int] = {}
    for w in workers:
        got = w.files()
        assert got, f"worker {w.socket_id} got nothing"
        for rel, size in got.items():
            assert rel not in delivered, f"{rel} delivered twice"
            assert (w.out / rel).read_bytes() == content(Path(rel).name, size)
            delivered[rel] = size
    assert delivered == expected
    assert all(t["skipped"] == 0 for t in pair.com.status()["targets"])


@pytest.mark.parametrize("storage_path", ["group"], indirect=True)
@pytest.mark.parametrize("clients_path", [["sender.chunksize=65536"]], indirect=True)
def test_with_4_pipelines_a_stream_client_gets_every_file_whole(clients_path):
    """Chunks of files sent by different pipelines interleave on the client's connection: each file still
    arrives whole."""
    pair = clients_path
    worker = _worker(pair, "all")
    wait_until(lambda: _connected(pair, worker), 20, "the client's connection")
    expected = {f"p/{i:03d}.dat": 1_000 + (i * 40_009) % 400_000 for i in range(200)}  # up to 7 chunks each
    for rel, size in expected.items():
        write_file(pair.source / rel, size)
    wait_until(lambda: worker.files() == expected, 60, "every file at the stream client")
    for rel, size in expected.items():
        assert (worker.out / rel).read_bytes() == content(Path(rel).name, size), rel
    # the storage receivers are a separate target that may finish a moment after the client
    wait_until(lambda: all(intact(pair.target, r, s) for r, s in expected.items()), 60, "every file in storage")
    assert pair.com.target(worker.socket_id)["skipped"] == 0
