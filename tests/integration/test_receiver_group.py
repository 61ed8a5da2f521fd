"""`hidra receiver --workers N`: a group of real receiver processes on one host, one target directory."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import yaml

from hidra_proc import (Hidra, consecutive_free_ports, intact, receiver_overrides, sender_overrides, tree, wait_until,
                        write_file)
from test_receiver_hardening import RawSender

pytestmark = pytest.mark.integration

GROUP_READY = re.compile(r"hidra receiver group ready: (\d+) workers; data \[(.*?)\], confirmations \[(.*?)\]")
HINT = re.compile(r"sender: --set '(sender\.storage\.data=\[.*?\])' --set '(sender\.storage\.confirmations=\[.*?\])'")


class Member:
    """One worker's endpoints, in the shape RawSender takes."""

    def __init__(self, data: str, confirmations: str) -> None:
        self.data, self.confirmations = data, confirmations

    def endpoints(self) -> tuple[str, str, str]:
        return self.data, self.confirmations, ""


class Group:
    """A `hidra receiver --workers N` process whose workers are found by the ports they listen on."""

    def __init__(self, tmp_path: Path, workers: int, *overrides: str) -> None:
        self.target = tmp_path / "target"
        self.target.mkdir(exist_ok=True)
        self.parent = Hidra("receiver", tmp_path / "group.log", [*receiver_overrides(self.target), *overrides],
                            flags=["--workers", str(workers)])

    def wait_ready(self) -> tuple[list[str], list[str]]:
        def ready() -> re.Match | None:
            assert self.parent.proc.poll() is None, self.parent.text()
            return GROUP_READY.search(self.parent.text())

        m = wait_until(ready, 60, "the group's ready line")
        assert isinstance(m, re.Match)
        return m.group(2).split(", "), m.group(3).split(", ")

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.parent.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def worker_on(self, endpoint: str) -> psutil.Process:
        """The worker listening on ``endpoint`` (tcp://host:port)."""
        port = int(endpoint.rpartition(":")[2])
        found = [w for w in self.workers() if any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                                                  for c in w.net_connections("tcp"))]
        assert len(found) == 1, (endpoint, found)
        return found[0]

    def close(self) -> None:
        pids = [w.pid for w in self.workers()]
        self.parent.kill()
        for pid in pids:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def group(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Group]:
    g = Group(tmp_path, getattr(request, "param", 2))
    try:
        yield g
    finally:
        g.close()


def store_one(group: Group, data: str, confirmations: str, name: str) -> None:
    sender = RawSender(Member(data, confirmations))  # type: ignore[arg-type]
    try:
        sender.send({"filename": name}, name.encode() * 100)
        wait_until(lambda: sender.confirmed_all({name.encode()}), 30, f"the confirmation of {name}")
    finally:
        sender.close()
    assert (group.target / name).read_bytes() == name.encode() * 100


@pytest.mark.parametrize("group", [3], indirect=True)
def test_group_of_three_logs_every_workers_endpoints_in_the_form_a_sender_takes(group: Group) -> None:
    data, confirmations = group.wait_ready()
    assert len(data) == len(confirmations) == 3
    assert len(set(data + confirmations)) == 6 and all(e.startswith("tcp://127.0.0.1:") for e in data)
    assert len(group.workers()) == 3
    hint = HINT.search(group.parent.text())
    assert hint, group.parent.text()
    assert yaml.safe_load(hint.group(1).partition("=")[2]) == data  # as `--set` parses it
    assert yaml.safe_load(hint.group(2).partition("=")[2]) == confirmations
    for i in range(3):
        assert f"[worker {i}] " in group.parent.text()


def test_worker_i_binds_the_configured_ports_plus_i_and_only_worker_0_the_status_port(tmp_path: Path) -> None:
    data, conf, status = consecutive_free_ports(2, 3)
    g = Group(tmp_path, 2, f"receiver.data=tcp://127.0.0.1:{data}", f"receiver.confirmations=tcp://127.0.0.1:{conf}",
              f"receiver.status=tcp://127.0.0.1:{status}")
    try:
        assert g.wait_ready() == ([f"tcp://127.0.0.1:{data}", f"tcp://127.0.0.1:{data + 1}"],
                                  [f"tcp://127.0.0.1:{conf}", f"tcp://127.0.0.1:{conf + 1}"])
        text = g.parent.text()
        assert re.search(rf"\[worker 0\] .*hidra receiver ready: .*, status tcp://127.0.0.1:{status},", text), text
        assert re.search(r"\[worker 1\] .*hidra receiver ready: .*, status none,", text), text
    finally:
        g.close()


def test_ipc_group_gives_worker_i_the_paths_with_dot_i_and_stores_through_them(tmp_path: Path) -> None:
    g = Group(tmp_path, 2, f"receiver.data=ipc://{tmp_path}/data", f"receiver.confirmations=ipc://{tmp_path}/conf",
              "receiver.status=null")
    try:
        data, confirmations = g.wait_ready()
        assert data == [f"ipc://{tmp_path}/data", f"ipc://{tmp_path}/data.1"]
        assert confirmations == [f"ipc://{tmp_path}/conf", f"ipc://{tmp_path}/conf.1"]
        store_one(g, data[1], confirmations[1], "over-ipc.dat")
    finally:
        g.close()


def test_file_pushed_to_worker_1_is_stored_in_the_shared_target_and_confirmed(group: Group) -> None:
    data, confirmations = group.wait_ready()
    store_one(group, data[1], confirmations[1], "via-worker-1.dat")
    store_one(group, data[0], confirmations[0], "via-worker-0.dat")
    assert tree(group.target) == {"via-worker-1.dat": 1600, "via-worker-0.dat": 1600}


def test_sigkilled_worker_is_restarted_on_the_same_ports_with_a_warning_and_stores_again(group: Group) -> None:
    data, confirmations = group.wait_ready()
    victim = group.worker_on(data[1])
    victim.kill()
    victim.wait(10)
    wait_until(lambda: re.search(r"WARNING .*worker 1 exited with status 137; restarting it in 1 s on data "
                                 + re.escape(data[1]), group.parent.text()), 30, "the restart warning")
    wait_until(lambda: group.parent.text().count(f"hidra receiver ready: data {data[1]}, confirmations"
                                                 f" {confirmations[1]},") == 2, 60, "worker 1 ready again")
    assert group.worker_on(data[1]).pid != victim.pid
    store_one(group, data[1], confirmations[1], "after-restart.dat")
    assert group.parent.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_on_the_parent_stops_every_worker_and_leaves_no_orphan(group: Group, sig: int) -> None:
    group.wait_ready()
    workers = group.workers()
    assert len(workers) == 2
    group.parent.signal(sig)
    assert group.parent.proc.wait(30) == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert group.parent.text().count("hidra receiver stopped") == 2


def test_second_signal_kills_every_worker_at_once(group: Group) -> None:
    data, _ = group.wait_ready()
    group.worker_on(data[1]).suspend()  # a worker hung on its file system ignores the first SIGTERM
    group.parent.signal(signal.SIGTERM)
    wait_until(lambda: "hidra receiver stopped" in group.parent.text(), 30, "worker 0 stopped")
    workers = group.workers()
    group.parent.signal(signal.SIGTERM)
    assert group.parent.proc.wait(30) == 128 + signal.SIGTERM  # long before STOP_MARGIN_S would have passed
    assert "second signal: killing every worker at once" in group.parent.text()
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_parent_killed_with_sigkill_takes_its_workers_along(group: Group) -> None:
    group.wait_ready()
    workers = group.workers()
    group.parent.proc.kill()
    group.parent.proc.wait(10)
    wait_until(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 30,
               "the workers to die with their parent")


def _refused(tmp_path: Path, *overrides: str) -> str:
    (tmp_path / "target").mkdir(exist_ok=True)
    args = [sys.executable, "-m", "hidra_core", "receiver", "--workers", "3",
            *(a for o in [*receiver_overrides(tmp_path / "target"), *overrides] for a in ("--set", o))]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "hidra receiver ready" not in out.stderr
    return out.stderr


def test_overlapping_port_ranges_are_refused_naming_the_key(tmp_path: Path) -> None:
    err = _refused(tmp_path, "receiver.data=tcp://127.0.0.1:50100", "receiver.confirmations=tcp://127.0.0.1:50102")
    assert "receiver.data: worker 2 would bind tcp://127.0.0.1:50102, which worker 0 binds as" \
           " receiver.confirmations" in err, err


def test_inproc_endpoint_with_workers_is_refused_naming_the_key(tmp_path: Path) -> None:
    err = _refused(tmp_path, "receiver.data=inproc://data")
    assert "receiver.data: inproc://data: an inproc endpoint is reachable only inside one process" in err, err


def test_worker_that_cannot_bind_its_port_stops_the_group_at_start_naming_the_key(tmp_path: Path) -> None:
    data = consecutive_free_ports(2)[0]
    holder = socket.socket()
    holder.bind(("127.0.0.1", data + 1))  # worker 1's data port, held by "another program"
    holder.listen()
    g = Group(tmp_path, 2, f"receiver.data=tcp://127.0.0.1:{data}")
    try:
        assert g.parent.proc.wait(60) == 2
        text = g.parent.text()
        assert f"[worker 1] hidra: error: receiver.data tcp://127.0.0.1:{data + 1}: address already in use" in text
        assert "worker 1 exited with status 2 before it was ready; stopping the others" in text
        assert "group ready" not in text
    finally:
        holder.close()
        g.close()


def test_workers_1_runs_the_plain_receiver_in_process(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    receiver = Hidra("receiver", tmp_path / "receiver.log", receiver_overrides(tmp_path / "target"),
                     flags=["--workers", "1"])
    try:
        receiver.wait_ready()
        assert psutil.Process(receiver.proc.pid).children() == []
        sender = RawSender(receiver)
        try:
            sender.send({"filename": "plain.dat"}, b"plain")
            wait_until(lambda: sender.confirmed_all({b"plain.dat"}), 30, "the confirmation")
        finally:
            sender.close()
        assert receiver.stop() == 0
        assert "[worker" not in receiver.text() and "group" not in receiver.text()
    finally:
        receiver.kill()


def test_up_with_workers_and_streams_moves_files_through_the_group(tmp_path: Path) -> None:
    data, conf, status = consecutive_free_ports(2, 3)
    args = [sys.executable, "-m", "hidra_core", "up", "--workers", "2", "--streams", "2", "--source", "in",
            "--target", "out", "--set", f"receiver.data=tcp://127.0.0.1:{data}",
            "--set", f"receiver.confirmations=tcp://127.0.0.1:{conf}",
            "--set", f"receiver.status=tcp://127.0.0.1:{status}",
            "--set", "sender.clients.com=tcp://127.0.0.1:0", "--set", "sender.clients.request=tcp://127.0.0.1:0",
            "--set", "sender.rest.address=127.0.0.1:0", "--set", "receiver.rest.address=127.0.0.1:0"]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            text = log.read_text()
            return "hidra receiver group ready: 2 workers" in text and "hidra sender ready" in text

        wait_until(ready, 60, "the group and the sender ready")
        expected = {f"f{i}.dat": 1000 * (i + 1) for i in range(8)}
        for name, size in expected.items():
            write_file(tmp_path / "in" / name, size)
        wait_until(lambda: all(intact(tmp_path / "out", n, s) for n, s in expected.items()), 60, "files in out/")
        assert tree(tmp_path / "out") == expected
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert log.read_text().count("hidra receiver stopped") == 2
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_a_worker_sigkilled_mid_run_loses_nothing_with_4_pipelines_and_removal(tmp_path: Path) -> None:
    """`hidra receiver --workers 3` and a sender with 4 pipelines removing its sources: one worker dies among 600
    files and is restarted by the group; every file arrives once and whole, no source goes before its copy."""
    group = Group(tmp_path, 3)
    source, state = tmp_path / "source", tmp_path / "state"
    source.mkdir()
    state.mkdir()
    try:
        data, confirmations = group.wait_ready()
        sender = Hidra("sender", tmp_path / "sender.log", [
            *sender_overrides(source, state, f"[{', '.join(data)}]", f"[{', '.join(confirmations)}]"),
            "sender.streams=4", "sender.chunksize=65536", "sender.storage.remove_source=after_confirmation"])
        sender.wait_ready()
        wait_until(lambda: sender.text().count(" is up") == 3, 30, "every worker up at the sender")
        expected = {f"d{i % 10}/f{i:04d}.dat": 2000 + (i * 131) % 300_000 for i in range(600)}
        early: set[str] = set()
        for n, (rel, size) in enumerate(expected.items()):
            write_file(source / rel, size)
            if n == 200:
                wait_until(lambda: len(tree(group.target)) >= 50, 60, "the first files at the target")
                group.worker_on(data[1]).kill()

        def done() -> bool:
            early.update(rel for rel in expected if not (source / rel).exists()
                         and not intact(group.target, rel, expected[rel]))
            return not tree(source) and all(intact(group.target, r, s) for r, s in expected.items())

        wait_until(done, 120, "every file stored by the group and removed from the source")
        assert early == set()
        assert tree(group.target) == expected
        assert re.search(r"worker 1 exited with status 137; restarting it", group.parent.text())
        assert sender.stop() == 0
    finally:
        group.close()
