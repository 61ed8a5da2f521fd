"""Helpers for end-to-end tests: real ``hidra`` subprocesses, deadline polling, deterministic file contents."""
from __future__ import annotations

import hashlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

READY = re.compile(r"hidra (sender|receiver) ready")
ENDPOINTS = re.compile(r"data (\S+), confirmations (\S+), status (\S+),")
REST_URL = re.compile(r"hidra (?:sender|receiver) ready: .*?, rest (http://\S+),")


def free_rest(*roles: str) -> list[str]:
    """``--set`` assignments that put the REST API of each role on a free port (no test binds a fixed one)."""
    return [f"{role}.rest.address=127.0.0.1:0" for role in roles]


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # polling interval of a deadline loop, not synchronisation


def scrape(url: str) -> dict[str, float]:
    """``GET url/metrics``: sample name with its labels (``name{k="v"}``) -> value, parsed by prometheus-client's
    own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def content(name: str, size: int) -> bytes:
    """Deterministic bytes for a file name, so any copy can be checked without keeping the original."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def write_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content(path.name, size))


def tree(root: Path) -> dict[str, int]:
    """relative path -> size of every regular file below root (files vanishing meanwhile are left out)."""
    out = {}
    for p in root.rglob("*"):
        try:
            if p.is_file():
                out[str(p.relative_to(root))] = p.stat().st_size
        except FileNotFoundError:
            continue
    return out


def intact(root: Path, rel: str, size: int) -> bool:
    p = root / rel
    try:
        return p.read_bytes() == content(p.name, size)
    except FileNotFoundError:
        return False


class Hidra:
    """One ``hidra`` subprocess whose stderr goes to a log file that tests can read while it runs."""

    def __init__(self, role: str, log: Path, overrides: list[str], config: Path | None = None,
                 flags: list[str] | None = None, prefix: list[str] | None = None) -> None:
        """``prefix``: a command that runs the process (``ip netns exec NS``); it must exec it, not fork."""
        self.role = role
        self.log = log
        args = [*(prefix or []), sys.executable, "-m", "hidra_core", role, *(flags or [])]
        if config is not None:
            args += ["--config", str(config)]
        rest = free_rest(role) if role in ("sender", "receiver") else []
        for o in [*rest, *overrides]:  # NOTE: the test's own overrides come later and win
            args += ["--set", o]
        self._logfile = open(log, "ab")
        self._start_offset = log.stat().st_size
        self.proc = subprocess.Popen(args, stdout=self._logfile, stderr=subprocess.STDOUT, cwd=log.parent)

    def text(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self._start_offset)
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 20) -> str:
        def ready() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.role} exited with {self.proc.returncode}:\n{self.text()}")
            m = READY.search(self.text())
            return self.text() if m else None

        return str(wait_until(ready, timeout, f"the {self.role} ready line"))

    def endpoints(self) -> tuple[str, str, str]:
        m = ENDPOINTS.search(self.text())
        assert m, self.text()
        return m.group(1), m.group(2), m.group(3)

    def rest_url(self) -> str:
        """The REST API's URL, from the ready line."""
        m = REST_URL.search(self.text())
        assert m, self.text()
        return m.group(1)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._logfile.close()


def receiver_overrides(target: Path, data: str = "tcp://127.0.0.1:0", confirmations: str = "tcp://127.0.0.1:0",
                       status: str = "tcp://127.0.0.1:0") -> list[str]:
    return [f"receiver.target={target}", f"receiver.data={data}", f"receiver.confirmations={confirmations}",
            f"receiver.status={status}"]


def sender_overrides(source: Path, state: Path, data: str, confirmations: str) -> list[str]:
    return [f"sender.source.inotify.path={source}", f"sender.storage.data={data}",
            f"sender.storage.confirmations={confirmations}", f"sender.ledger.path={state / 'ledger.sqlite'}",
            "sender.clients.com=tcp://127.0.0.1:0", "sender.clients.request=tcp://127.0.0.1:0"]


def no_part_files(root: Path) -> bool:
    """No unfinished file of the receiver is left: its reserved directory holds no file (a running receiver's
    own partial directory is there, empty)."""
    return not any(not p.is_dir() for p in (root / ".hidra-partial").rglob("*"))


def consecutive_free_ports(n: int, ranges: int = 1) -> list[int]:
    """The first ports of ``ranges`` disjoint runs of ``n`` consecutive ports that are free now (released at
    once: `hidra` binds them itself, as a receiver group binds port + i)."""
    held: list[socket.socket] = []
    bases: list[int] = []
    try:
        while len(bases) < ranges:
            run = [socket.socket()]
            held.append(run[0])
            run[0].bind(("127.0.0.1", 0))
            base = run[0].getsockname()[1]
            try:
                for port in range(base + 1, base + n):
                    run.append(socket.socket())
                    held.append(run[-1])
                    run[-1].bind(("127.0.0.1", port))
            except OSError:
                continue
            bases.append(base)
        return bases
    finally:
        for s in held:
            s.close()
