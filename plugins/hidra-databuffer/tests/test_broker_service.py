"""The broker as a real subprocess on free ports, over real HTTP, with real bsread PULL writers (databuffer.md §14
"Broker REST", "Request and transport", audit items)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import zmq
from bsread.handlers.compact import Handler, Message
from mflow.mflow import ReceiveHandler

from hidra_core.testing import wait_until

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


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hidra_databuffer.broker.main", *args]


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, audit: Path | None = None) -> Broker:
        audit = audit or tmp_path / "audit.log"
        proc = subprocess.Popen(_command("--rest_port", "0", "--output_port", "0", "--audit_file", str(audit),
                                         "--log_level", "WARNING", *args),
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # NOTE: printed once REST and PUSH listen; EOF if it died
        assert line, f"broker exited with {proc.wait(timeout=10)} before it listened"
        found = READY.search(line)
        assert found, line
        return Broker(proc, found[1], found[2], int(found[3]), audit)

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


def _range(request: dict[str, Any]) -> dict[str, int]:
    return dict(json.loads(request["data_api_request"])["range"])


# --- Broker REST -----------------------------------------------------------------------------------------------------

def test_run_walks_stopped_configured_receiving_and_sends_exactly_one_request(broker: Broker,
                                                                              writers: Callable[[Broker], Writer]
                                                                              ) -> None:
    writer = writers(broker)
    assert broker.status() == "stopped"
    echo = broker.json("POST", "/parameters", json=PARAMS)
    assert echo == {"state": "ok", "status": "configured", "parameters": PARAMS}
    broker.empty("PUT", "/start_pulse_id/1000")
    assert broker.status() == "receiving"
    broker.empty("PUT", "/stop_pulse_id/1100")
    assert broker.status() == "stopped"
    assert _range(writer.receive()) == {"startPulseId": 1000, "endPulseId": 1100}
    assert writer.nothing()


def test_two_runs_count_two_requests_and_write_two_audit_lines(broker: Broker,
                                                               writers: Callable[[Broker], Writer]) -> None:
    writer = writers(broker)
    for start in (10, 30):
        assert broker.run(start, start + 5).content == b""
        assert _range(writer.receive())["startPulseId"] == start
    assert broker.json("GET", "/statistics")["statistics"]["n_processed_requests"] == 2
    assert len(broker.audit_lines()) == 2


@pytest.mark.parametrize("key", ["general/created", "general/user", "general/process", "general/instrument",
                                 "output_file"])
def test_missing_required_parameter_is_an_error_naming_it_and_state_is_unchanged(broker: Broker, key: str) -> None:
    params = {k: v for k, v in PARAMS.items() if k != key}
    out = broker.json("POST", "/parameters", json=params)
    assert out["state"] == "error" and key in out["status"] and "received" in out["status"], out
    assert broker.status() == "stopped"
    broker.json("POST", "/parameters", json=PARAMS)
    assert broker.json("POST", "/parameters", json=params)["state"] == "error"
    assert broker.status() == "configured"
    assert broker.json("GET", "/statistics")["status"] == "configured"


@pytest.mark.parametrize("body", [None, b"", b"{not json", b"[1, 2]", b"42"])
def test_missing_or_non_json_body_is_an_error_with_http_200(broker: Broker, body: bytes | None) -> None:
    out = broker.json("POST", "/parameters", data=body)
    assert out["state"] == "error" and out["status"], out
    assert broker.status() == "stopped"


@pytest.mark.parametrize("path", ["/start_pulse_id/abc", "/stop_pulse_id/abc", "/start_pulse_id/1.5",
                                  "/stop_pulse_id/-3"])
def test_non_integer_pulse_id_is_an_error_with_http_200(broker: Broker, path: str) -> None:
    out = broker.json("PUT", path)
    assert out["state"] == "error" and "pulse id" in out["status"], out


@pytest.mark.parametrize(("method", "path"), [("GET", "/nowhere"), ("POST", "/status"), ("DELETE", "/stop"),
                                              ("GET", "/start_pulse_id/5")])
def test_unknown_path_or_method_is_the_error_json_not_a_fastapi_4xx(broker: Broker, method: str, path: str) -> None:
    out = broker.json(method, path)
    assert out["state"] == "error" and path in out["status"], out


def test_start_twice_is_one_run_and_a_new_start_replaces_the_old(broker: Broker,
                                                                 writers: Callable[[Broker], Writer]) -> None:
    writer = writers(broker)
    broker.json("POST", "/parameters", json=PARAMS)
    broker.empty("PUT", "/start_pulse_id/100")
    broker.empty("PUT", "/start_pulse_id/100")
    broker.empty("PUT", "/stop_pulse_id/150")
    assert _range(writer.receive()) == {"startPulseId": 100, "endPulseId": 150}
    broker.json("POST", "/parameters", json=PARAMS)
    broker.empty("PUT", "/start_pulse_id/200")
    broker.empty("PUT", "/start_pulse_id/210")
    broker.empty("PUT", "/stop_pulse_id/250")
    assert _range(writer.receive()) == {"startPulseId": 210, "endPulseId": 250}
    assert writer.nothing()
    assert broker.json("GET", "/statistics")["statistics"]["n_processed_requests"] == 2


def test_start_before_parameters_jumps_straight_to_receiving(broker: Broker) -> None:
    broker.empty("PUT", "/start_pulse_id/7")
    assert broker.status() == "stopped"
    broker.json("POST", "/parameters", json=PARAMS)
    assert broker.status() == "receiving"


def test_stop_before_start_and_duplicate_stop_send_nothing_and_audit_nothing(broker: Broker,
                                                                            writers: Callable[[Broker], Writer]
                                                                            ) -> None:
    writer = writers(broker)
    broker.empty("PUT", "/stop_pulse_id/5")
    assert writer.nothing() and broker.audit_lines() == []
    broker.run(10, 20)
    assert _range(writer.receive()) == {"startPulseId": 10, "endPulseId": 20}
    broker.empty("PUT", "/stop_pulse_id/20")
    assert writer.nothing()
    assert len(broker.audit_lines()) == 1
    assert broker.json("GET", "/statistics")["statistics"]["n_processed_requests"] == 1


def test_stop_below_start_is_an_error_that_sends_nothing_and_keeps_receiving(broker: Broker,
                                                                             writers: Callable[[Broker], Writer]
                                                                             ) -> None:
    """F2: DBW sent the reversed range."""
    writer = writers(broker)
    out = broker.run(100, 99).json()
    assert out["state"] == "error" and "stop_pulse_id < start_pulse_id" in out["status"], out
    assert writer.nothing()
    assert broker.status() == "receiving" and broker.audit_lines() == []


def test_stop_with_start_but_no_parameters_is_not_configured(broker: Broker) -> None:
    """F3: DBW answered with a TypeError text."""
    broker.empty("PUT", "/start_pulse_id/100")
    out = broker.json("PUT", "/stop_pulse_id/110")
    assert out["state"] == "error" and "not configured" in out["status"], out
    assert broker.audit_lines() == []
    broker.json("POST", "/parameters", json=PARAMS)
    assert broker.status() == "receiving"


def test_get_stop_clears_without_sending(broker: Broker, writers: Callable[[Broker], Writer]) -> None:
    writer = writers(broker)
    broker.json("POST", "/parameters", json=PARAMS)
    broker.empty("PUT", "/start_pulse_id/100")
    assert broker.json("GET", "/stop") == {"state": "ok", "status": "stopped"}
    assert broker.status() == "stopped"
    broker.empty("PUT", "/stop_pulse_id/110")  # NOTE: the start was cleared: now a stop before start
    assert writer.nothing() and broker.audit_lines() == []


def test_kill_ends_the_process_at_once(broker: Broker) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(broker.rest + "/kill", timeout=30)
    assert broker.proc.wait(timeout=30) == 0


def test_statistics_fields_and_types(broker: Broker, writers: Callable[[Broker], Writer]) -> None:
    out = broker.json("GET", "/statistics")
    assert out["state"] == "ok" and out["status"] == "stopped"
    stats = out["statistics"]
    assert stats["n_processed_requests"] == 0 and re.fullmatch(r"\d{8}-\d{6}", stats["process_startup_time"])
    assert "last_sent_write_request" not in stats
    writer = writers(broker)
    broker.run(1, 2)
    sent = writer.receive()
    stats = broker.json("GET", "/statistics")["statistics"]
    assert type(stats["n_processed_requests"]) is int and stats["n_processed_requests"] == 1
    assert re.fullmatch(r"\d{8}-\d{6}", stats["last_sent_write_request_time"])
    last = stats["last_sent_write_request"]
    assert last["data_api_request"] == sent["data_api_request"] and last["parameters"] == sent["parameters"]
    assert last["timestamp"] == pytest.approx(sent["timestamp"])
