"""The broker's REST API and state machine, end to end (databuffer.md §14 "Broker REST")."""
from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import uvicorn

from hidra_core.testing import wait_until
from hidra_databuffer.broker.app import create_app
from hidra_databuffer.broker.config import BrokerConfig
from hidra_databuffer.broker.main import _open


from broker_proc import PARAMS, Broker, Writer, request_range  # noqa: E402

pytest_plugins = ["broker_proc"]  # NOTE: its fixtures: start_broker, broker, writers

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
    assert request_range(writer.receive()) == {"startPulseId": 1000, "endPulseId": 1100}
    assert writer.nothing()


def test_two_runs_count_two_requests_and_write_two_audit_lines(broker: Broker,
                                                               writers: Callable[[Broker], Writer]) -> None:
    writer = writers(broker)
    for start in (10, 30):
        assert broker.run(start, start + 5).content == b""
        assert request_range(writer.receive())["startPulseId"] == start
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
    assert request_range(writer.receive()) == {"startPulseId": 100, "endPulseId": 150}
    broker.json("POST", "/parameters", json=PARAMS)
    broker.empty("PUT", "/start_pulse_id/200")
    broker.empty("PUT", "/start_pulse_id/210")
    broker.empty("PUT", "/stop_pulse_id/250")
    assert request_range(writer.receive()) == {"startPulseId": 210, "endPulseId": 250}
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
    assert request_range(writer.receive()) == {"startPulseId": 10, "endPulseId": 20}
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


def test_unexpected_exception_is_the_error_json_with_http_200(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker in-process (real sockets, real uvicorn) with a stop that raises what no handler expects."""
    config = BrokerConfig(rest_port=0, output_port=0, audit_file=tmp_path / "audit.log")
    broker, rest = _open(config)
    server = uvicorn.Server(uvicorn.Config(create_app(broker), log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [rest]}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{rest.getsockname()[1]}"
        wait_until(lambda: server.started, what="uvicorn started")

        def boom(pulse_id: int) -> None:
            raise RuntimeError(f"boom at {pulse_id}")

        monkeypatch.setattr(broker.state, "stop_pulse", boom)
        reply = requests.put(url + "/stop_pulse_id/5", timeout=30)
        assert reply.status_code == 200
        assert reply.json() == {"state": "error", "status": "RuntimeError: boom at 5"}
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        broker.sender.close()
        rest.close()
