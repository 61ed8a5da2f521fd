"""`hidra up`, the README's first command: a sender and a receiver on loopback, supervised together."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from hidra_proc import intact, tree, wait_until, write_file

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


def test_up_moves_files_and_stops_cleanly_on_sigterm(tmp_path):
    data, conf, status = _free_ports(3)
    args = [sys.executable, "-m", "hidra_core", "up", "--source", "in", "--target", "out",
            "--set", f"receiver.data=tcp://127.0.0.1:{data}", "--set", f"sender.storage.data=tcp://127.0.0.1:{data}",
            "--set", f"receiver.confirmations=tcp://127.0.0.1:{conf}",
            "--set", f"sender.storage.confirmations=tcp://127.0.0.1:{conf}",
            "--set", f"receiver.status=tcp://127.0.0.1:{status}",
            "--set", "sender.clients.com=tcp://127.0.0.1:0", "--set", "sender.clients.request=tcp://127.0.0.1:0"]
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        text = lambda: (tmp_path / "up.log").read_text()  # noqa: E731
        wait_until(lambda: "hidra sender ready" in text() and "hidra receiver ready" in text(), 30, "both ready")
        expected = {"a.txt": 10, "sub/dir/b.bin": 300_000, "sub/empty": 0}
        for rel, size in expected.items():
            write_file(tmp_path / "in" / rel, size)
        wait_until(lambda: all(intact(tmp_path / "out", r, s) for r, s in expected.items()), 30, "files in out/")
        assert tree(tmp_path / "out") == expected
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "hidra sender stopped" in text() and "hidra receiver stopped" in text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_help_of_every_command_has_an_example():
    for command in ("up", "sender", "receiver", "plugins", "config"):
        out = subprocess.run([sys.executable, "-m", "hidra_core", command, "--help"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0
        assert "example" in out.stdout and "hidra " + command in out.stdout
