"""Test helpers: the broker as a real subprocess on free ports (``python -m``), talked to over real HTTP, and
writers as real ZeroMQ PULL sockets whose messages are decoded by bsread's own receive path."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import zmq
from bsread.handlers.compact import Handler, Message
from mflow.mflow import ReceiveHandler

READY = re.compile(r"ready: rest (http://\S+), requests tcp://([\d.]+):(\d+), audit ")
PARAMS = {"general/created": "2024-01-31T14:25:01", "general/user": "p12345", "general/process": "daq.py",
          "general/instrument": "alvra", "output_file": "/tmp/never/run_0001.h5"}
AUDIT_LINE = re.compile(r"^\[\d{8}-\d{6}\] \{")


@dataclass
class Broker:
    proc: subprocess.Popen[str]
    rest: str
    host: str
    port: int
    audit: Path
    api: str | None = None  # hidra's API, when its ready line names one


    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        reply = requests.request(method, self.rest + path, timeout=30, **kwargs)
        assert reply.status_code == 200, (method, path, reply.status_code, reply.text)
        return reply

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()

    def status(self) -> str:
        out = self.json("GET", "/status")
        assert out["state"] == "ok", out
        return str(out["status"])

    def empty(self, method: str, path: str) -> None:
        reply = self.call(method, path)
        assert reply.content == b"", reply.text

    def run(self, start: int, stop: int, params: dict[str, Any] | None = None) -> requests.Response:
        assert self.json("POST", "/parameters", json=params or PARAMS)["state"] == "ok"
        self.empty("PUT", f"/start_pulse_id/{start}")
        return self.call("PUT", f"/stop_pulse_id/{stop}")

    def audit_lines(self) -> list[str]:
        return self.audit.read_text().splitlines() if self.audit.exists() else []


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hidra_databuffer.broker.main", *args]


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, audit: Path | None = None, flags: bool = True) -> Broker:
        """``flags=False``: only ``args`` (e.g. ``--config``), without the test's free ports and audit file."""
        audit = audit or tmp_path / "audit.log"
        given = ("--rest_port", "0", "--output_port", "0", "--audit_file", str(audit), "--log_level", "WARNING")
        # NOTE: hidra's API on a free port too (a later --set in args wins)
        proc = subprocess.Popen(command(*(given if flags else ()), "--set", "rest.address=127.0.0.1:0", *args),
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # NOTE: printed once REST and PUSH listen; EOF if it died
        assert line, f"broker exited with {proc.wait(timeout=10)} before it listened"
        found = READY.search(line)
        assert found, line
        api = re.search(r", api (http://\S+)", line)
        return Broker(proc, found[1], found[2], int(found[3]), audit, api[1] if api else None)

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
def broker(start_broker: Callable[..., Broker]) -> Broker:
    return start_broker()


class Writer:
    """A PULL writer on the broker's request socket; messages decoded by bsread's own receive path."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], broker: Broker) -> None:
        self.socket = context.socket(zmq.PULL)
        self.socket.linger = 0
        # NOTE: the PUSH side deals only to writers whose handshake is done: wait for it before any request
        monitor = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            self.socket.connect(f"tcp://{broker.host}:{broker.port}")
            assert monitor.poll(10_000), "the writer never connected to the broker"
        finally:
            self.socket.disable_monitor()
            monitor.close()
        self.handler = Handler()
        self.receiver = ReceiveHandler(self.socket)

    def message(self, timeout_ms: int = 10_000) -> Message | None:
        if not self.socket.poll(timeout_ms):
            return None
        message: Message = self.handler.receive(self.receiver)
        return message

    def receive(self, timeout_ms: int = 10_000) -> dict[str, Any]:
        message = self.message(timeout_ms)
        assert message is not None, "no writing request arrived"
        return {name: value.value for name, value in message.data.items()}

    def nothing(self) -> bool:
        """True if no request arrives within 1 s (databuffer.md §14)."""
        return self.message(1000) is None

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def writers(zmq_context: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Callable[[Broker], Writer]]:
    made: list[Writer] = []

    def connect(broker: Broker) -> Writer:
        made.append(Writer(zmq_context, broker))
        return made[-1]

    yield connect
    for writer in made:
        writer.close()


def request_range(request: dict[str, Any]) -> dict[str, int]:
    return dict(json.loads(request["data_api_request"])["range"])
