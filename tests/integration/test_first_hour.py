"""A new user's first hour with `hidra up`, `hidra sender` and `hidra config check`: real subprocesses."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from hidra_proc import Hidra, intact, receiver_overrides, wait_until, write_file
from test_up import _free_ports

pytestmark = pytest.mark.integration


def _hidra(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hidra_core", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def _port_sets() -> list[str]:
    data, conf, status = _free_ports(3)
    return ["--set", f"receiver.data=tcp://127.0.0.1:{data}", "--set", f"sender.storage.data=tcp://127.0.0.1:{data}",
            "--set", f"receiver.confirmations=tcp://127.0.0.1:{conf}",
            "--set", f"sender.storage.confirmations=tcp://127.0.0.1:{conf}",
            "--set", f"receiver.status=tcp://127.0.0.1:{status}",
            "--set", "sender.clients.com=tcp://127.0.0.1:0", "--set", "sender.clients.request=tcp://127.0.0.1:0",
            "--set", "sender.rest.address=127.0.0.1:0", "--set", "receiver.rest.address=127.0.0.1:0"]


class Up:
    """`hidra up` as a subprocess in ``cwd``, its output in ``up.log``."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.log_path = cwd / "up.log"
        self._log = open(self.log_path, "ab")
        self._start = self.log_path.stat().st_size
        self.proc = subprocess.Popen([sys.executable, "-m", "hidra_core", "up", *args, *_port_sets()], cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log_path.read_bytes()[self._start:].decode(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"hidra up exited with {self.proc.returncode}:\n{self.text()}"
            return "hidra sender ready" in self.text() and "hidra receiver ready" in self.text()

        wait_until(ready, 30, "both ready lines")

    def stop(self) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


# --- 13: source and target must lie apart -------------------------------------------------------------------


def test_up_with_the_target_inside_the_source_is_refused_at_once(tmp_path: Path) -> None:
    result = _hidra("up", "--source", "s", "--target", "s/out", *_port_sets(), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    for text in ("sender.source.inotify.path", "'s'", "receiver.target", "'s/out'", "overlap"):
        assert text in result.stderr
    assert "ready" not in result.stderr
    assert not (tmp_path / "s" / "out").exists()


def test_up_with_the_source_inside_the_target_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "store")
    result = _hidra("up", "--source", "link/in", "--target", "store", *_port_sets(), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "overlap" in result.stderr and "'link/in'" in result.stderr and "'store'" in result.stderr


def test_config_check_refuses_overlapping_source_and_target(tmp_path: Path) -> None:
    (tmp_path / "s" / "out").mkdir(parents=True)
    path = tmp_path / "loop.yaml"
    path.write_text("sender: {source: {type: inotify, inotify: {path: s}}}\nreceiver: {target: s/out}\n")
    result = _hidra("config", "check", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert "sender.source.inotify.path" in result.stderr and "receiver.target" in result.stderr
    assert "'s/out'" in result.stderr and "overlap" in result.stderr


def test_sender_refuses_a_local_target_inside_its_source(tmp_path: Path) -> None:
    (tmp_path / "s" / "copy").mkdir(parents=True)
    result = _hidra("sender", "--set", "sender.source.inotify.path=s", "--set", "sender.local_target.path=s/copy",
                    cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "sender.local_target.path" in result.stderr and "overlap" in result.stderr


# --- 14: a source without a path option ----------------------------------------------------------------------


def test_up_runs_the_acme_source_which_has_no_path_option(tmp_path: Path) -> None:
    pytest.importorskip("hidra_acme")
    ctx = zmq.Context()
    detector = ctx.socket(zmq.XPUB)
    detector.linger = 0
    endpoint = f"tcp://127.0.0.1:{detector.bind_to_random_port('tcp://127.0.0.1')}"
    (tmp_path / "det").mkdir()
    config = tmp_path / "acme.yaml"
    config.write_text(f"sender:\n  source:\n    type: acme\n    acme: {{endpoint: '{endpoint}', root: det}}\n")
    up = Up(tmp_path, "--config", str(config), "--target", "out")
    try:
        up.wait_ready()
        assert "unknown key" not in up.text()
        assert detector.poll(10_000) and detector.recv() == b"\x01file-closed"  # the source subscribed
        write_file(tmp_path / "det" / "run1" / "frame.raw", 4096)

        def announced_and_stored() -> bool:
            detector.send_multipart([b"file-closed", json.dumps({"path": "run1/frame.raw", "size": 4096}).encode()])
            return intact(tmp_path / "out", "run1/frame.raw", 4096)

        wait_until(announced_and_stored, 30, "the announced file in out/", interval=0.2)
        assert up.stop() == 0
    finally:
        up.stop()
        detector.close()
        ctx.term()


@pytest.mark.parametrize(("option", "value", "names"), [
    ("--source", "somewhere", ["--source", "'acme' event source has no path option"]),
    ("--target", "det/out", ["sender.source.acme (root)", "'det/out'", "overlap"]),
])
def test_up_with_a_source_without_path_refuses_what_it_cannot_do(tmp_path: Path, option: str, value: str,
                                                                 names: list[str]) -> None:
    config = tmp_path / "acme.yaml"
    config.write_text("sender: {source: {type: acme, acme: {endpoint: 'tcp://127.0.0.1:1', root: det}}}\n")
    result = _hidra("up", "--config", str(config), option, value, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    for text in names:
        assert text in result.stderr
    assert not (tmp_path / "det").exists()


# --- 15: one ledger per source, locked while a sender runs ----------------------------------------------------


def test_up_with_another_source_in_the_same_directory_keeps_working(tmp_path: Path) -> None:
    for n, source in enumerate(("first", "second")):
        up = Up(tmp_path, "--source", source, "--target", "out")
        try:
            up.wait_ready()
            write_file(tmp_path / source / f"f{n}.dat", 1000)
            wait_until(lambda: intact(tmp_path / "out", f"f{n}.dat", 1000), 30, f"f{n}.dat stored")
            assert up.stop() == 0, up.text()
            assert "belongs to source" not in up.text()
        finally:
            up.stop()
    ledgers = sorted(p.name for p in (tmp_path / "hidra-data" / "state").glob("ledger-*.sqlite"))
    assert len(ledgers) == 2 and ledgers[0].startswith("ledger-first-") and ledgers[1].startswith("ledger-second-")
    report = _hidra("ledger", "--set", "sender.source.inotify.path=second", cwd=tmp_path)
    assert report.returncode == 0 and "1 confirmed" in report.stdout and "ledger-second-" in report.stdout


def test_an_explicit_ledger_of_another_source_is_still_refused(tmp_path: Path) -> None:
    for source in ("a", "b"):
        (tmp_path / source).mkdir()
    args = ["--set", "sender.ledger.path=state/l.sqlite", "--set", "sender.clients.com=tcp://127.0.0.1:0",
            "--set", "sender.clients.request=tcp://127.0.0.1:0"]
    first = Hidra("sender", tmp_path / "a.log", ["sender.source.inotify.path=a", *args[1::2]])
    try:
        first.wait_ready()
        assert first.stop() == 0
    finally:
        first.kill()
    result = _hidra("sender", "--set", "sender.source.inotify.path=b", *args, cwd=tmp_path)
    assert result.returncode == 2 and "belongs to source" in result.stderr


def test_a_second_sender_on_the_same_ledger_stops_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    common = ["sender.source.inotify.path=src", "sender.clients.com=tcp://127.0.0.1:0",
              "sender.clients.request=tcp://127.0.0.1:0"]
    first = Hidra("sender", tmp_path / "first.log", common)
    try:
        first.wait_ready()
        started = time.monotonic()
        second = _hidra("sender", *[a for o in common for a in ("--set", o)], cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        assert "is in use by another sender" in second.stderr and f"pid {first.proc.pid}" in second.stderr
        assert "hidra-data/state/ledger-src-" in second.stderr
        assert "ready" not in second.stderr
        assert first.proc.poll() is None and time.monotonic() - started < 60
    finally:
        first.stop()
        first.kill()


# --- 16: start-up errors name what to change -------------------------------------------------------------------


@pytest.fixture
def held_endpoint() -> Iterator[str]:
    """An endpoint on a port that a real socket of the test holds."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield f"tcp://127.0.0.1:{holder.getsockname()[1]}"
    finally:
        holder.close()


@pytest.mark.parametrize(("role", "key"), [("receiver", "receiver.data"), ("receiver", "receiver.status"),
                                           ("receiver", "receiver.confirmations"), ("sender", "sender.clients.com")])
def test_a_busy_port_names_the_option_that_moves_it(tmp_path: Path, held_endpoint: str, role: str, key: str) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "source").mkdir()
    overrides = [*receiver_overrides(tmp_path / "target"), "sender.source.inotify.path=source",
                 "sender.clients.com=tcp://127.0.0.1:0", "sender.clients.request=tcp://127.0.0.1:0",
                 f"{key}={held_endpoint}"]
    result = _hidra(role, *[a for o in overrides for a in ("--set", o)], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{key} {held_endpoint}: address already in use" in result.stderr
    assert f"choose another with --set {key}=" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_builds_drivers_but_opens_no_socket(tmp_path: Path, held_endpoint: str) -> None:
    (tmp_path / "target").mkdir()
    path = tmp_path / "r.yaml"
    path.write_text(f"receiver: {{target: target, data: '{held_endpoint}'}}\n")
    result = _hidra("config", "check", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK (receiver)"


def test_log_level_after_the_subcommand_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    (tmp_path / "t").mkdir()
    path.write_text("receiver: {target: t}\n")
    result = _hidra("config", "check", str(path), "--log-level", "DEBUG", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = _hidra("sender", "--log-level", "DEBUG", "--set", "sender.source.inotify.path=nowhere", cwd=tmp_path)
    assert result.returncode == 2 and "unrecognized arguments" not in result.stderr
    assert "DEBUG" in result.stderr and "nowhere" in result.stderr
