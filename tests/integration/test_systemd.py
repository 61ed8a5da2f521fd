"""Running under systemd (contrib/systemd/): the notify protocol of every process, the units as systemd would run
them, and logs for the journal. There is no systemd (PID 1) here: a datagram socket plays its part, as
sd_notify(3) describes it, and the test that needs a real systemd says so when it skips."""
from __future__ import annotations

import configparser
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hidra_proc import intact, wait_until, write_file
from test_up import _free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HIDRA = [sys.executable, "-m", "hidra_core"]


class FakeSystemd:
    """The notify socket of a service manager: records each datagram with the pid that sent it."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.got: list[tuple[int, str]] = []

    def env(self, watchdog_s: float | None = None) -> dict[str, str]:
        env = {**os.environ, "NOTIFY_SOCKET": self.path}
        if watchdog_s:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        return env

    def take(self) -> list[tuple[int, str]]:
        while True:
            try:
                data, anc, _f, _a = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return self.got
            pid = next((struct.unpack("iII", d[:12])[0] for lvl, kind, d in anc
                        if lvl == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), -1)
            self.got += [(pid, line) for line in data.decode().splitlines()]

    def lines(self, pid: int) -> list[str]:
        return [line for p, line in self.take() if p == pid]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(tmp_path)
    yield fake
    fake.close()


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)


def _stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up_args(source: Path, target: Path) -> list[str]:
    data, confirmations, status = _free_ports(3)
    args = ["--source", str(source), "--target", str(target)]
    for key, value in (("receiver.data", f"tcp://127.0.0.1:{data}"), ("sender.storage.data", f"tcp://127.0.0.1:{data}"),
                       ("receiver.confirmations", f"tcp://127.0.0.1:{confirmations}"),
                       ("sender.storage.confirmations", f"tcp://127.0.0.1:{confirmations}"),
                       ("receiver.status", f"tcp://127.0.0.1:{status}"), ("sender.clients.enabled", "false")):
        args += ["--set", f"{key}={value}"]
    return args


def _receiver_args(target: Path) -> list[str]:
    return [*HIDRA, "receiver", "--set", f"receiver.target={target}", "--set", "receiver.data=tcp://127.0.0.1:0",
            "--set", "receiver.confirmations=tcp://127.0.0.1:0", "--set", "receiver.status=tcp://127.0.0.1:0"]


def test_receiver_and_sender_tell_systemd_ready_then_ping_the_watchdog_then_stopping(tmp_path, systemd):
    target, source = tmp_path / "target", tmp_path / "source"
    target.mkdir()
    source.mkdir()
    receiver = _start(_receiver_args(target), systemd.env(watchdog_s=0.4), tmp_path / "receiver.log")
    try:
        wait_until(lambda: "READY=1" in systemd.lines(receiver.pid), 30, "the receiver's READY=1")
        assert "hidra receiver ready" in (tmp_path / "receiver.log").read_text()  # READY comes after the ready line
        log = (tmp_path / "receiver.log").read_text()
        data, confirmations = (log.split(f"{key} ")[1].split(",")[0] for key in ("ready: data", "confirmations"))
        sender = _start([*HIDRA, "sender", "--set", f"sender.source.inotify.path={source}",
                         "--set", f"sender.storage.data={data}",
                         "--set", f"sender.storage.confirmations={confirmations}",
                         "--set", f"sender.ledger.path={tmp_path / 'ledger.sqlite'}",
                         "--set", "sender.clients.enabled=false"], systemd.env(watchdog_s=0.4), tmp_path / "sender.log")
        try:
            wait_until(lambda: "READY=1" in systemd.lines(sender.pid), 30, "the sender's READY=1")
            write_file(source / "a.dat", 5000)
            wait_until(lambda: intact(target, "a.dat", 5000), 30, "a.dat")
            wait_until(lambda: systemd.lines(sender.pid).count("WATCHDOG=1") >= 3, 30, "the sender's pings")
            assert _stop(sender) == 0
            assert systemd.lines(sender.pid)[-1] == "STOPPING=1"
        finally:
            _stop(sender)
        wait_until(lambda: systemd.lines(receiver.pid).count("WATCHDOG=1") >= 3, 30, "the receiver's pings")
        assert _stop(receiver) == 0
        assert systemd.lines(receiver.pid)[-1] == "STOPPING=1"
    finally:
        _stop(receiver)


def test_hidra_up_and_a_receiver_group_notify_from_their_main_process_only(tmp_path, systemd):
    """With NotifyAccess=main only the unit's main process counts: children report to it, not to systemd."""
    up = _start([*HIDRA, "up", *_up_args(tmp_path / "in", tmp_path / "out")], systemd.env(watchdog_s=0.6),
                tmp_path / "up.log")
    try:
        wait_until(lambda: "READY=1" in systemd.lines(up.pid), 60, "hidra up's READY=1")
        text = (tmp_path / "up.log").read_text()
        assert "hidra sender ready" in text and "hidra receiver ready" in text  # both were ready before it
        wait_until(lambda: systemd.lines(up.pid).count("WATCHDOG=1") >= 2, 30, "hidra up's pings (both children's)")
        assert _stop(up) == 0
        assert "STOPPING=1" in systemd.lines(up.pid)
    finally:
        _stop(up)
    group = _start([*_receiver_args(tmp_path / "out"), "--workers", "2"], systemd.env(), tmp_path / "group.log")
    try:
        wait_until(lambda: "READY=1" in systemd.lines(group.pid), 60, "the group's READY=1")
        assert _stop(group) == 0
    finally:
        _stop(group)
    assert {pid for pid, _line in systemd.take()} == {up.pid, group.pid}


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "contrib" / "systemd" / name)
    return unit


@pytest.mark.parametrize("name", ["hidra-sender@.service", "hidra-receiver@.service"])
def test_a_unit_runs_as_systemd_would_run_it(tmp_path, systemd, name):
    """The unit's own ExecStart (paths moved under tmp_path), its WatchdogSec, TimeoutStartSec, KillSignal and
    TimeoutStopSec, with this socket in systemd's place."""
    unit = _unit(name)
    service = unit["Service"]
    assert (service["Type"], service["NotifyAccess"], service["KillSignal"]) == ("notify", "main", "SIGTERM")
    role = "sender" if "sender" in name else "receiver"
    config = tmp_path / f"{role}-det1.yaml"
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    config.write_text(json.dumps({
        "sender": {"source": {"type": "inotify", "inotify": {"path": str(tmp_path / "in")}},
                   "ledger": {"path": str(tmp_path / "ledger.sqlite")}, "clients": {"enabled": False}},
        "receiver": {"target": str(tmp_path / "out"), "data": "tcp://127.0.0.1:0",
                     "confirmations": "tcp://127.0.0.1:0", "status": "tcp://127.0.0.1:0"}}))
    argv = shlex.split(service["ExecStart"].replace("%i", "det1").replace("/etc/hidra", str(tmp_path)))
    assert argv[0] == "/opt/hidra/.venv/bin/hidra"
    argv = [*HIDRA, *argv[1:]]
    proc = _start(argv, systemd.env(watchdog_s=float(service["WatchdogSec"])), tmp_path / "unit.log")
    try:
        wait_until(lambda: "READY=1" in systemd.lines(proc.pid), float(service["TimeoutStartSec"]), "READY=1")
        wait_until(lambda: "WATCHDOG=1" in systemd.lines(proc.pid), float(service["WatchdogSec"]), "a ping")
        started = time.monotonic()
        assert _stop(proc, float(service["TimeoutStopSec"])) == 0
        assert time.monotonic() - started < float(service["TimeoutStopSec"])
    finally:
        _stop(proc)


def test_units_pass_systemd_analyze_verify(tmp_path):
    verify = subprocess.run(["systemd-analyze", "--version"], capture_output=True) if _has("systemd-analyze") else None
    if verify is None or verify.returncode != 0:
        pytest.skip("systemd-analyze is not installed")
    for name in ("hidra-sender@.service", "hidra-receiver@.service", "hidra-databuffer@.service"):
        text = (ROOT / "contrib" / "systemd" / name).read_text()
        # NOTE: verify checks that ExecStart exists; the units name the installed path /opt/hidra/...
        copy = tmp_path / name.replace("@", "@det1")
        copy.write_text(text.replace("/opt/hidra/.venv/bin/hidra", sys.executable).replace(
            "EnvironmentFile=", "EnvironmentFile=-"))
        out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True)
        problems = [line for line in (out.stdout + out.stderr).splitlines()
                    if str(copy) in line or "Unknown" in line or "Failed to parse" in line]
        assert not problems, problems


def _has(tool: str) -> bool:
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


def test_a_unit_under_a_real_systemd():
    if not os.path.isdir("/run/systemd/system"):
        pytest.skip("no systemd runs this machine (PID 1 is not systemd): the notify protocol is checked with a"
                    " socket in the tests above")
    pytest.skip("a unit is only installed on a machine the tests own; run `systemctl start hidra-receiver@x` there")


def test_json_logs_carry_the_file_id_on_every_state_change_and_journal_lines_their_priority(tmp_path):
    """The README's `hidra --log-format json up` line as typed (ports and removal added)."""
    line = next(line for line in (ROOT / "README.md").read_text().splitlines() if "--log-format json up" in line)
    argv = shlex.split(line.split("#")[0])
    assert argv[0] == ".venv/bin/hidra"
    source, target = tmp_path / "hidra-data" / "source", tmp_path / "hidra-data" / "target"
    up = _start([*HIDRA, *argv[1:], *_up_args(source, target)[4:], "--set",
                 "sender.storage.remove_source=after_confirmation"], dict(os.environ), tmp_path / "json.log")
    try:
        wait_until(lambda: "hidra sender ready" in (tmp_path / "json.log").read_text(), 60, "the sender ready")
        write_file(source / "a.dat", 3000)
        wait_until(lambda: '"removed"' in (tmp_path / "json.log").read_text(), 30, "a.dat removed at the source")
        assert _stop(up) == 0
    finally:
        _stop(up)
    entries = [json.loads(line) for line in (tmp_path / "json.log").read_text().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    states = [e["state"] for e in entries if e.get("file_id") == "a.dat"]
    assert sorted(states) == sorted(["sent", "stored", "confirmed", "removed"]), states
    log = tmp_path / "journal.log"
    log.touch()
    st = os.stat(log)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    proc = _start([*HIDRA, "receiver", "--set", "receiver.target=/nonexistent"], env, log)
    assert proc.wait(60) == 2  # an error before any logging: the CLI's own message
    proc = _start([*_receiver_args(target)], env, log)
    try:
        wait_until(lambda: "hidra receiver ready" in log.read_text(), 30, "the receiver ready")
    finally:
        _stop(proc)
    lines = [line for line in log.read_text().splitlines() if "hidra_core" in line]
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>") for line in lines), lines
    assert any(line.startswith("<6>hidra_core.receiver.loop: hidra receiver ready") for line in lines)
