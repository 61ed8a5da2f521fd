"""The REST API and /metrics of real sender and receiver processes (issue 12), over real HTTP on loopback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
import zmq

from hidra_core._version import __version__
from hidra_core.protocol.confirmation import encode_heartbeat
from hidra_core.sender.ledger import Ledger
from hidra_proc import (Hidra, consecutive_free_ports, intact, receiver_overrides, scrape, sender_overrides,
                        wait_until, write_file)

pytestmark = pytest.mark.integration

SIZES = {f"run/f{i:02d}.raw": 1000 + 377 * i for i in range(20)}
TOKEN = "s3cret-token"


def _get(url: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(url + path, timeout=10, **kwargs)


def _json(url: str, path: str) -> Any:
    answer = _get(url, path)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _move(pair: Any, sizes: dict[str, int]) -> None:
    for rel, size in sizes.items():
        write_file(pair.source / rel, size)
    wait_until(lambda: all(intact(pair.target, rel, size) for rel, size in sizes.items()), 60, "the files stored")


def _counters_reach(url: str, **wanted: int) -> bool:
    counters = _json(url, "/statistics")["counters"]
    return all(counters[key] == value for key, value in wanted.items())


def test_every_endpoint_tells_what_was_moved(storage_path: Any) -> None:
    pair = storage_path
    receiver = pair.start_receiver()
    sender = pair.start_sender()
    s_url, r_url = sender.rest_url(), receiver.rest_url()
    _move(pair, SIZES)
    total = sum(SIZES.values())
    wait_until(lambda: _counters_reach(s_url, sent=20, confirmed=20), 30, "the sender's statistics: 20 confirmed")
    wait_until(lambda: _counters_reach(r_url, stored=20), 30, "the receiver's statistics: 20 stored")

    stats = _json(s_url, "/statistics")
    assert stats["counters"]["bytes"] == total and stats["counters"]["failed"] == 0
    assert (stats["queued"], stats["in_flight"], len(stats["pipelines"])) == (0, 0, 1)
    assert [m["up"] for m in stats["storage"]] == [True]
    r_stats = _json(r_url, "/statistics")
    assert r_stats["counters"]["bytes"] == total and r_stats["unfinished"] == 0
    assert sum(r_stats["durable_latency_s"]["counts"]) == 20

    metrics = scrape(s_url)
    assert metrics["hidra_sender_files_sent_total"] == 20 and metrics["hidra_sender_bytes_sent_total"] == total
    assert metrics["hidra_sender_files_confirmed_total"] == 20 and metrics["hidra_sender_in_flight_files"] == 0
    assert metrics['hidra_sender_ledger_files{state="confirmed"}'] == 20
    r_metrics = scrape(r_url)
    assert r_metrics["hidra_receiver_files_stored_total"] == 20
    assert r_metrics["hidra_receiver_bytes_stored_total"] == total
    assert r_metrics['hidra_receiver_durable_latency_seconds_bucket{le="+Inf"}'] == 20
    assert r_metrics["hidra_receiver_durable_latency_seconds_count"] == 20
    assert r_metrics["hidra_receiver_commit_seconds_count"] >= 1

    status = _json(s_url, "/status")
    assert (status["role"], status["state"], status["pid"], status["version"]) == ("sender", "running",
                                                                                 sender.proc.pid, __version__)
    assert status["source"]["root"] in (str(pair.source), os.path.realpath(pair.source)) and status["uptime_s"] > 0
    r_status = _json(r_url, "/status")
    assert (r_status["role"], r_status["state"], r_status["target"]) == ("receiver", "running", str(pair.target))

    config = _json(s_url, "/config")
    assert config["sender"]["source"]["inotify"]["path"] == str(pair.source) and "receiver" not in config
    assert _json(s_url, "/clients") == {"registrations": [], "targets": [], "expired": 0}
    confirmed = _json(s_url, "/files?state=confirmed&limit=100")["files"]
    assert sorted(f["file_id"] for f in confirmed) == sorted(SIZES)
    assert _json(s_url, "/files?state=unconfirmed")["files"] == [] and _json(s_url, "/files")["files"] == []
    first = _json(s_url, "/files?state=confirmed&limit=3")["files"]
    assert len(first) == 3 and all(f in confirmed for f in first)
    assert {"/status", "/statistics", "/files", "/clients", "/drain", "/stop", "/metrics"} <= set(
        _json(s_url, "/openapi.json")["paths"])
    assert "/files" not in _json(r_url, "/openapi.json")["paths"]

    assert requests.post(s_url + "/drain", timeout=10).status_code == 202  # nothing in flight: it stops at once
    assert sender.proc.wait(30) == 0
    assert requests.post(r_url + "/stop", timeout=10).status_code == 202
    assert receiver.proc.wait(30) == 0


#: (method, path, the request's other arguments, the sender's answer); the receiver has no /files: 404 there
BAD_REQUESTS: list[tuple[str, str, Callable[[], dict[str, Any]], int]] = [
    ("GET", "/nowhere", dict, 404),
    ("GET", "/status/../../etc/passwd", dict, 404),
    ("DELETE", "/status", dict, 405),
    ("PUT", "/stop", dict, 405),
    ("GET", "/drain", dict, 405),
    ("POST", "/metrics", dict, 405),
    ("GET", "/files?state=bogus", dict, 422),
    ("GET", "/files?limit=0", dict, 422),
    ("GET", "/files?limit=abc", dict, 422),
    ("GET", "/files?limit=99999999999999999999999", dict, 422),
    ("POST", "/drain", lambda: {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/stop", lambda: {"json": [1, 2]}, 400),
    ("POST", "/stop", lambda: {"json": {"now": True}}, 400),
    ("POST", "/drain", lambda: {"data": b"x" * (1 << 20)}, 413),
    ("POST", "/stop", lambda: {"data": iter([b"{}"] * 40_000)}, 413),  # chunked: no Content-Length
]


def test_bad_requests_get_a_clear_4xx_and_the_transfer_goes_on(storage_path: Any) -> None:
    pair = storage_path
    receiver = pair.start_receiver()
    sender = pair.start_sender()
    _move(pair, {"first.raw": 5000})
    for proc in (sender, receiver):
        url = proc.rest_url()
        for method, path, arguments, expected in BAD_REQUESTS:
            if proc is receiver and path.startswith("/files"):
                expected = 404
            answer = requests.request(method, url + path, timeout=10, **arguments())
            assert answer.status_code == expected, (proc.role, method, path, answer.status_code, answer.text)
            assert answer.json()["detail"], answer.text  # says what is wrong
        assert _json(url, "/status")["state"] == "running"
    assert "known: seen, sent, confirmed" in _get(sender.rest_url(), "/files?state=bogus").text
    _move(pair, {"after.raw": 7000})
    assert sender.proc.poll() is None and receiver.proc.poll() is None
    assert "Traceback" not in sender.text() + receiver.text()


def test_a_configured_token_is_required_on_every_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_TEST_REST_TOKEN", TOKEN)
    (tmp_path / "target").mkdir()
    # NOTE: off loopback, which a token allows; reached through loopback all the same
    receiver = Hidra("receiver", tmp_path / "receiver.log", [*receiver_overrides(tmp_path / "target"),
                     "receiver.rest.address=0.0.0.0:0", "receiver.rest.token={$env: HIDRA_TEST_REST_TOKEN}"])
    try:
        receiver.wait_ready()
        url = receiver.rest_url().replace("0.0.0.0", "127.0.0.1")
        for path in ("/status", "/statistics", "/config", "/metrics", "/openapi.json", "/nowhere"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                answer = _get(url, path, headers=headers)
                assert answer.status_code == 401, (path, headers, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
        for path in ("/stop", "/drain"):
            assert requests.post(url + path, timeout=10).status_code == 401
        assert receiver.proc.poll() is None
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert _get(url, "/status", headers=good).json()["state"] == "running"
        assert _get(url, "/config", headers=good).json()["receiver"]["rest"]["token"] == "***"
        assert TOKEN not in _get(url, "/config", headers=good).text
        assert _get(url, "/openapi.json", headers=good).json()["security"] == [{"bearer": []}]
        assert requests.post(url + "/stop", headers=good, timeout=10).status_code == 202
        assert receiver.proc.wait(30) == 0
    finally:
        receiver.kill()


@pytest.mark.parametrize("role", ["sender", "receiver"])
def test_rest_off_loopback_without_a_token_is_refused_at_start_naming_the_key(tmp_path: Path, role: str) -> None:
    (tmp_path / "in").mkdir()
    result = subprocess.run([sys.executable, "-m", "hidra_core", role, "--set", f"{role}.rest.address=0.0.0.0:0",
                             "--set", "sender.source.inotify.path=in", "--set", "receiver.target=in"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{role}.rest: " in result.stderr and "0.0.0.0:0 is not a loopback address: set token" in result.stderr
    assert "ready" not in result.stderr


def test_a_busy_rest_port_stops_start_up_naming_the_key_and_rest_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = f"127.0.0.1:{holder.getsockname()[1]}"
        result = subprocess.run([sys.executable, "-m", "hidra_core", "receiver",
                                 *(a for o in receiver_overrides(tmp_path / "target") for a in ("--set", o)),
                                 "--set", f"receiver.rest.address={busy}"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"receiver.rest.address {busy}: address already in use" in result.stderr
        off = Hidra("receiver", tmp_path / "off.log", [*receiver_overrides(tmp_path / "target"),
                                                       f"receiver.rest.address={busy}", "receiver.rest.enabled=false"])
        try:
            assert ", rest none, target " in off.wait_ready()
            assert off.stop() == 0
        finally:
            off.kill()
    finally:
        holder.close()


class SilentStorage:
    """A storage 'receiver' that beacons and takes the data but never confirms: files stay in flight."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.pull, self.pub = self.context.socket(zmq.PULL), self.context.socket(zmq.PUB)
        for sock in (self.pull, self.pub):
            sock.linger = 0
        self.data = f"tcp://127.0.0.1:{self.pull.bind_to_random_port('tcp://127.0.0.1')}"
        self.confirmations = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"

    def beacon(self) -> None:
        self.pub.send_multipart(encode_heartbeat("silent-storage", {}))
        while self.pull.poll(0):
            self.pull.recv_multipart()

    def close(self) -> None:
        self.context.destroy(linger=0)


def _ledger_states(state: Path) -> dict[str, str]:
    book = Ledger(str(state / "ledger.sqlite"), None, exclusive=False)
    try:
        return {fid: name for fid, name, _attempts, _reason in book.files(range(9), 100)}
    finally:
        book.close()


def test_post_drain_waits_for_the_files_in_flight_and_post_stop_ends_the_wait_with_exit_0(tmp_path: Path) -> None:
    source, state = tmp_path / "source", tmp_path / "state"
    source.mkdir()
    state.mkdir()
    storage = SilentStorage()
    sender = Hidra("sender", tmp_path / "sender.log", [
        *sender_overrides(source, state, storage.data, storage.confirmations), "sender.drain_timeout_s=600"])
    try:
        sender.wait_ready()
        url = sender.rest_url()

        def statistics() -> dict[str, Any]:
            storage.beacon()
            return dict(_json(url, "/statistics"))

        for i in range(5):
            write_file(source / f"held{i}.raw", 2000)
        wait_until(lambda: statistics()["in_flight"] == 5, 30, "5 files awaiting confirmation", interval=0.1)
        answer = requests.post(url + "/drain", timeout=10)
        assert (answer.status_code, answer.json()) == (202, {"state": "draining"})
        assert requests.post(url + "/drain", json={}, timeout=10).status_code == 202  # idempotent
        wait_until(lambda: statistics() and _json(url, "/status")["state"] == "draining", 30, "the draining state",
                   interval=0.1)
        assert sender.proc.poll() is None  # NOTE: it waits for the confirmations, up to drain_timeout_s
        answer = requests.post(url + "/stop", timeout=10)
        assert (answer.status_code, answer.json()) == (202, {"state": "stopping"})
        assert sender.proc.wait(60) == 0
        assert _ledger_states(state) == {f"held{i}.raw": "sent" for i in range(5)}  # resumed at the next start
        assert "5 files pending" in sender.text()
    finally:
        sender.kill()
        storage.close()


def test_each_worker_of_a_receiver_group_serves_its_own_rest_port(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (base,) = consecutive_free_ports(2)
    group = Hidra("receiver", tmp_path / "group.log", [*receiver_overrides(tmp_path / "target"),
                  f"receiver.rest.address=127.0.0.1:{base}"], flags=["--workers", "2"])
    try:
        wait_until(lambda: "hidra receiver group ready: 2 workers" in group.text(), 60, "the group's ready line")
        assert f"rest [http://127.0.0.1:{base}, http://127.0.0.1:{base + 1}]" in group.text()
        pids = {_json(f"http://127.0.0.1:{port}", "/status")["pid"] for port in (base, base + 1)}
        assert len(pids) == 2 and group.proc.pid not in pids
        assert group.stop() == 0
    finally:
        group.kill()
