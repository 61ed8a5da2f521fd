"""The systemd notify protocol (``Type=notify`` units, ``contrib/systemd/``): ``READY=1`` once a process serves,
``WATCHDOG=1`` while its loop turns (``WatchdogSec=``), ``STOPPING=1`` when it stops. Datagrams to the socket
systemd names in ``NOTIFY_SOCKET``; without it (not started by systemd) every call does nothing.

Written from sd_notify(3) rather than taken from a library: it is one datagram per call, and the process must
not depend on libsystemd being installed.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import time
from typing import Mapping

__all__ = ["ENV_VARS", "NotifyRelay", "Notifier"]

log = logging.getLogger(__name__)

#: what a unit's process gets from systemd; a process that starts children of its own strips them from theirs
ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # NOTE: '@' names a socket in the abstract namespace (a leading NUL byte)
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._interval = int(usec) / 2e6  # sd_watchdog_enabled(3): ping at half the timeout
        self._next_ping = 0.0
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def tick(self, now: float | None = None) -> None:
        """Ping the watchdog if it is due; cheap enough to call on every turn of a loop."""
        if self._interval is None:
            return
        now = time.monotonic() if now is None else now
        if now >= self._next_ping:
            self._next_ping = now + self._interval
            self._send("WATCHDOG=1")

    def _send(self, message: str) -> None:
        if not self._address or self._failed:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as exc:  # NOTE: said once; the service itself goes on
            self._failed = True
            log.warning("systemd notify socket %s: %s; no further notifications", self._address.lstrip("\0"), exc)


class NotifyRelay:
    """For a process that supervises children which notify (``hidra up``): the children notify this process on a
    socket of its own (``child_env``); it tells systemd READY=1 once every one of ``expected`` (their pids) is
    ready, pings the watchdog only while every one of them pings its own, and says STOPPING=1 when asked."""

    def __init__(self, upstream: Notifier | None = None) -> None:
        self.upstream = upstream or Notifier()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind("\0" + f"hidra-notify-{os.getpid()}-{os.urandom(6).hex()}")
        self._sock.setblocking(False)
        self._address = self._sock.getsockname()
        self._expected: set[int] = set()
        self._ready: set[int] = set()
        self._pinged: dict[int, float] = {}
        self._interval = self.upstream._interval
        self._told_ready = False

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in ENV_VARS}
        name = self._address if isinstance(self._address, str) else self._address.decode()
        env["NOTIFY_SOCKET"] = "@" + name.lstrip("\0")
        if self._interval is not None:
            env["WATCHDOG_USEC"] = str(int(self._interval * 2e6))
        return env

    def expect(self, pids: set[int]) -> None:
        self._expected = set(pids)

    def poll(self, now: float | None = None) -> None:
        """Take the children's notifications; pass on what systemd should hear."""
        now = time.monotonic() if now is None else now
        while True:
            try:
                data, ancillary, _flags, _addr = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                break
            pid = _sender_pid(ancillary)
            for line in data.decode(errors="replace").splitlines():
                if line == "READY=1":
                    self._ready.add(pid)
                elif line == "WATCHDOG=1":
                    self._pinged[pid] = now
        if not self._told_ready and self._expected and self._expected <= self._ready:
            self._told_ready = True
            self.upstream.ready(f"{len(self._expected)} processes ready")
        if self._told_ready and (self._interval is None or all(
                now - self._pinged.get(pid, -1e9) < 2 * self._interval for pid in self._expected)):
            self.upstream.tick(now)

    def stopping(self) -> None:
        self.upstream.stopping()

    def close(self) -> None:
        self._sock.close()


def _sender_pid(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= 12:
            return struct.unpack("iII", data[:12])[0]
    return -1
