"""`hidra up`, the README's first command: a sender and a receiver on loopback, supervised together."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hidra_proc import intact, tree, wait_until, write_file
from test_retry_shutdown import BIG, mid_big_file

pytestmark = pytest.mark.integration


def _free_ports(n: int) -> list[int]:
    # NOTE: `hidra up` binds its own ports; reserving and releasing them here is the only way to give it
    # ports that no parallel test uses. The window between release and bind is tiny.
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_up(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    data, conf, status = _free_ports(3)
    args = [sys.executable, "-m", "hidra_core", "up", "--source", "in", "--target", "out",
            "--set", f"receiver.data=tcp://127.0.0.1:{data}", "--set", f"sender.storage.data=tcp://127.0.0.1:{data}",
            "--set", f"receiver.confirmations=tcp://127.0.0.1:{conf}",
            "--set", f"sender.storage.confirmations=tcp://127.0.0.1:{conf}",
            "--set", f"receiver.status=tcp://127.0.0.1:{status}",
            "--set", "sender.clients.com=tcp://127.0.0.1:0", "--set", "sender.clients.request=tcp://127.0.0.1:0",
            "--set", "sender.rest.address=127.0.0.1:0", "--set", "receiver.rest.address=127.0.0.1:0"]
    for o in overrides:
        args += ["--set", o]
    with open(tmp_path / "up.log", "wb") as log:
        # NOTE: its own session, so that a "Ctrl-C" (SIGINT to the process group) reaches only `hidra up`
        # and its children, as a terminal's would.
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: proc.poll() is None and "hidra sender ready" in _log(tmp_path)
               and "hidra receiver ready" in _log(tmp_path), 30, "both ready")
    return proc


def _log(tmp_path: Path) -> str:
    return (tmp_path / "up.log").read_text()


def _children(proc: subprocess.Popen) -> dict[str, int]:
    """role -> pid of the sender and receiver that `hidra up` started."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if ppid == proc.pid:
            found[next(a.decode() for a in argv if a in (b"sender", b"receiver"))] = int(entry)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_all(proc: subprocess.Popen, pids: dict[str, int]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_up_moves_files_and_stops_cleanly_on_sigterm(tmp_path):
    proc = _start_up(tmp_path)
    try:
        expected = {"a.txt": 10, "sub/dir/b.bin": 300_000, "sub/empty": 0}
        for rel, size in expected.items():
            write_file(tmp_path / "in" / rel, size)
        wait_until(lambda: all(intact(tmp_path / "out", r, s) for r, s in expected.items()), 30, "files in out/")
        assert tree(tmp_path / "out") == expected
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "hidra sender stopped" in _log(tmp_path) and "hidra receiver stopped" in _log(tmp_path)
    finally:
        _stop_all(proc, {})


def test_up_ctrl_c_mid_file_stops_the_sender_first_and_the_file_arrives(tmp_path):
    proc = _start_up(tmp_path, f"sender.chunksize={2**20}", "sender.drain_timeout_s=60")
    pids = _children(proc)
    try:
        mid_big_file(tmp_path / "in", pids["sender"])
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        assert proc.wait(60 + 30) == 0  # a deadline: drain_timeout_s plus a margin
        assert intact(tmp_path / "out", "big.dat", BIG)  # the receiver ran until the sender had finished
        text = _log(tmp_path)
        assert text.index("the sender stopped with status 0") < text.index("the receiver stopped with status 0")
        assert not any(_alive(pid) for pid in pids.values())
    finally:
        _stop_all(proc, pids)


def test_up_second_sigterm_during_the_drain_kills_both_at_once(tmp_path):
    proc = _start_up(tmp_path, f"sender.chunksize={2**20}", "sender.drain_timeout_s=600")
    pids = _children(proc)
    try:
        mid_big_file(tmp_path / "in", pids["sender"])
        os.kill(pids["receiver"], signal.SIGSTOP)  # a receiver stalled on a hung file system
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "received SIGTERM: draining" in _log(tmp_path), 30, "the sender draining")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM  # long before drain_timeout_s
        assert not any(_alive(pid) for pid in pids.values())
    finally:
        _stop_all(proc, pids)


def test_help_of_every_command_has_an_example():
    for command in ("up", "sender", "receiver", "plugins", "config"):
        out = subprocess.run([sys.executable, "-m", "hidra_core", command, "--help"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0
        assert "example" in out.stdout and "hidra " + command in out.stdout
