"""The systemd notify protocol (sd_notify(3)) against a real datagram socket, as systemd listens on it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from hidra_core.host.notify import Notifier, NotifyRelay


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock, str(tmp_path / "notify")
    sock.close()


def test_ready_status_watchdog_and_stopping_reach_the_socket(listener) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    notifier.ready("up")
    assert sock.recv(100) == b"READY=1\nSTATUS=up"
    notifier.tick(100.0)
    notifier.tick(100.5)  # within half the timeout (1 s): not again
    notifier.tick(101.0)
    notifier.stopping()
    assert [sock.recv(100) for _ in range(3)] == [b"WATCHDOG=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_an_abstract_socket_name_is_reached() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"hidra-test-{os.getpid()}-{time.monotonic_ns()}"
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_or_with_another_processs_watchdog_nothing_is_sent(listener) -> None:
    sock, path = listener
    assert not Notifier({}).enabled
    Notifier({}).ready()  # no socket: a no-op, no error
    other = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)})
    other.tick(1.0)
    other.stopping()
    assert sock.recv(100) == b"STOPPING=1"  # the watchdog was meant for another process


def test_a_vanished_socket_costs_one_warning_not_the_service(tmp_path, caplog) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.ready()
    notifier.stopping()
    assert sum("no further notifications" in r.message for r in caplog.records) == 1


def test_a_relay_is_ready_once_every_expected_child_is(listener) -> None:
    sock, path = listener
    relay = NotifyRelay(Notifier({"NOTIFY_SOCKET": path}))
    code = "from hidra_core.host.notify import Notifier; import sys; Notifier().ready(); sys.stdin.read()"
    children = [subprocess.Popen([sys.executable, "-c", code], env=relay.child_env(), stdin=subprocess.PIPE)
                for _ in range(2)]
    try:
        relay.expect({children[0].pid, children[1].pid, 999_999_999})  # a third that never reports
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(relay._ready) < 2:
            relay.poll()
            time.sleep(0.02)
        assert relay._ready == {children[0].pid, children[1].pid}
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            sock.recv(100)  # not ready while one is missing
        relay.expect({children[0].pid, children[1].pid})
        relay.poll()
        assert sock.recv(100).startswith(b"READY=1")
    finally:
        for child in children:
            child.communicate(b"", timeout=10)
        relay.close()
