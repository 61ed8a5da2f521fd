"""hidra's REST API in every long-running databuffer process: the broker and the writers serve the kernel's routes
(``/status``, ``/statistics``, ``/config``, ``/metrics``, ``/openapi.json``, ``POST /drain``, ``POST /stop``) on
a port of their own, the buffer (a ``hidra up``) its sender's and receiver's. Checked against ``hidra databuffer
up`` moving a real bsread stream into an HDF5 file: the numbers are those of what was moved."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from hidra_core.testing import wait_until


from broker_proc import PARAMS, Broker  # noqa: E402
from up_proc import get_json  # noqa: E402

pytest_plugins = ["broker_proc", "up_proc"]  # NOTE: their fixtures: start_broker, broker; up

CHANNELS = ("T:SCALAR", "T:STR", "T:WAVE", "T:IMG")


def _url(log: Path, pattern: str) -> str | None:
    found = re.search(pattern, log.read_text(errors="replace"))
    return found[1] if found else None


def _urls(up: dict[str, Any]) -> dict[str, str]:
    """The API of each process, from its ready line in ``hidra databuffer up``'s output."""
    patterns = {"broker": r"databuffer broker ready: .*?, api (http://\S+)",
                "writer": r"databuffer writer ready: .*?, api (http://\S+),",
                "sender": r"hidra sender ready: .*? rest (http://\S+),",
                "receiver": r"hidra receiver ready: .*? rest (http://\S+),"}

    def found() -> dict[str, str] | None:
        assert up["proc"].poll() is None, up["log"].read_text()[-3000:]
        urls = {name: _url(up["log"], pattern) for name, pattern in patterns.items()}
        return urls if all(urls.values()) else None  # type: ignore[return-value]

    urls: dict[str, str] = wait_until(found, 60, what="the ready lines of broker, writer, sender and receiver")
    return urls


def _json(url: str, **kwargs: Any) -> Any:
    reply = requests.get(url, timeout=10, **kwargs)
    assert reply.status_code == 200, (url, reply.status_code, reply.text)
    return reply.json()


def _metrics(url: str, **kwargs: Any) -> dict[str, float]:
    """``/metrics`` parsed by prometheus_client's own parser: sample name -> value (samples without labels)."""
    reply = requests.get(url + "/metrics", timeout=10, **kwargs)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain"), reply.text
    return {sample.name: sample.value for family in text_string_to_metric_families(reply.text)
            for sample in family.samples if not sample.labels}


def _write_a_range(up: dict[str, Any]) -> tuple[Path, int, int]:
    rest, stream = up["rest"], up["stream"]
    wait_until(lambda: get_json(rest + "/status") and (get_json(up["query"] + "/status") or {}).get("newest_pulse_id"),
               60, what="the broker and a buffered pulse")
    output = up["base"] / "out" / "run1.h5"
    assert requests.post(rest + "/parameters", json={**PARAMS, "output_file": str(output)}, timeout=5).ok
    first = max(stream.sent) + 1
    assert requests.put(f"{rest}/start_pulse_id/{first}", timeout=5).text == ""
    wait_until(lambda: max(stream.sent) >= first + 30, 30, what="30 more pulses sent")
    assert requests.put(f"{rest}/stop_pulse_id/{first + 20}", timeout=5).text == ""
    wait_until(output.exists, 60, what="the HDF5 file")
    return output, first, first + 20


@pytest.mark.slow
def test_every_databuffer_process_reports_what_it_moved_over_the_hidra_api(up: dict[str, Any]) -> None:
    urls = _urls(up)
    output, first, last = _write_a_range(up)
    with h5py.File(output, "r") as f:
        points = sum(len(f[f"/data/{name}/pulse_id"]) for name in CHANNELS)
    writer = wait_until(lambda: (s := _json(urls["writer"] + "/statistics"))["counters"]["files_written"] and s,
                        30, what="the writer's count of the file")
    assert writer["counters"] == {"requests": 1, "files_written": 1, "files_failed": 0, "requests_skipped": 0,
                                  "requests_dropped": 0, "channels_written": len(CHANNELS), "points_written": points,
                                  "bytes_written": output.stat().st_size}
    assert writer["last"]["output_file"] == str(output) and writer["last"]["ok"] is True
    broker = _json(urls["broker"] + "/statistics")
    assert broker["counters"] == {"parameters": 1, "starts": 1, "runs": 1, "requests_audited": 1,
                                  "requests_sent": 1, "refused": 0, "send_errors": 0}
    assert broker["last"] | {"time": None} == {"output_file": str(output), "start_pulse_id": first,
                                               "stop_pulse_id": last, "time": None}
    assert broker["status"] == "stopped" and broker["gauges"] == {"channels": len(CHANNELS), "receiving": 0}

    assert _metrics(urls["broker"])["hidra_databuffer_broker_runs_total"] == 1
    writer_metrics = _metrics(urls["writer"])
    assert writer_metrics["hidra_databuffer_writer_points_written_total"] == points
    assert writer_metrics["hidra_databuffer_writer_bytes_written_total"] == output.stat().st_size

    for name, role in (("broker", "databuffer-broker"), ("writer", "databuffer-writer")):
        status = _json(urls[name] + "/status")
        assert (status["role"], status["state"], status["pid"]) == (role, "running", status["pid"])
        assert status["version"] and status["uptime_s"] > 0 and isinstance(status["errors"], list)
        spec = _json(urls[name] + "/openapi.json")
        assert {"/status", "/statistics", "/config", "/metrics", "/drain", "/stop"} <= set(spec["paths"])
    assert _json(urls["broker"] + "/status")["rest"] == up["rest"]
    assert _json(urls["writer"] + "/status")["data_api"] == up["query"] + "/query"
    assert _json(urls["broker"] + "/config")["rest_port"] == int(up["rest"].rsplit(":", 1)[1])
    assert _json(urls["writer"] + "/config")["data_api_url"] == up["query"] + "/query"

    # the buffer: once the stream stops, its sender and receiver count every pulse sent
    stream = up["stream"]
    stream.stop.set()
    stream.join(10)
    wait_until(lambda: _json(urls["receiver"] + "/statistics")["counters"].get("stored") == len(stream.sent), 60,
               what=f"the buffer's receiver counting the {len(stream.sent)} pulses sent")
    # NOTE: the sender counts a pulse once its confirmation is back, a moment after the receiver stored it
    wait_until(lambda: _json(urls["sender"] + "/statistics")["counters"].get("confirmed") == len(stream.sent), 60,
               what=f"the buffer's sender counting the {len(stream.sent)} pulses confirmed")
    assert _metrics(urls["receiver"])["hidra_receiver_files_stored_total"] == len(stream.sent)


BAD = [("GET", "/drain", {}, 405), ("GET", "/stop", {}, 405), ("POST", "/status", {}, 405),
       ("PUT", "/statistics", {}, 405), ("DELETE", "/config", {}, 405), ("GET", "/nothing/here", {}, 404),
       ("POST", "/drain", {"data": b"{not json"}, 400), ("POST", "/stop", {"json": {"now": True}}, 400),
       ("POST", "/drain", {"data": b"x" * (1 << 20)}, 413)]


@pytest.mark.parametrize(("method", "path", "kwargs", "code"), BAD, ids=[f"{m} {p} {c}" for m, p, _k, c in BAD])
def test_bad_requests_to_the_broker_and_writer_apis_get_a_4xx_and_both_go_on(
        start_broker: Callable[..., Broker], start_writer: Callable[..., Writer], method: str, path: str,
        kwargs: dict[str, Any], code: int) -> None:
    broker = start_broker("--set", "rest.address=127.0.0.1:0")
    writer = start_writer(broker)
    assert broker.api is not None
    for api in (broker.api, writer.api):
        reply = requests.request(method, api + path, timeout=10, **kwargs)
        assert reply.status_code == code, reply.text
        assert reply.json()["detail"]
        assert _json(api + "/status")["state"] == "running"
    assert broker.status() == "stopped" and broker.proc.poll() is None and writer.proc.poll() is None


@dataclass
class Writer:
    proc: subprocess.Popen[str]
    api: str


@pytest.fixture
def start_writer() -> Iterator[Callable[..., Writer]]:
    """``hidra-databuffer-writer`` as a real process on the broker's request port, its API on a free port."""
    procs: list[subprocess.Popen[str]] = []

    def start(broker: Broker, *args: str) -> Writer:
        proc = subprocess.Popen([sys.executable, "-m", "hidra_databuffer.dbwriter.main",
                                 f"tcp://{broker.host}:{broker.port}", "-1", "--log_level", "WARNING", "--set",
                                 "rest.address=127.0.0.1:0", *args], stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs.append(proc)
        assert proc.stderr is not None
        for line in proc.stderr:  # NOTE: EOF if it died before its ready line
            if found := re.search(r"writer ready: .*, api (http://\S+),", line):
                return Writer(proc, found[1])
        raise AssertionError(f"the writer exited with {proc.wait(10)} before its ready line")

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_post_drain_and_stop_end_the_broker_and_the_writer(start_broker: Callable[..., Broker],
                                                           start_writer: Callable[..., Writer]) -> None:
    broker = start_broker("--set", "rest.address=127.0.0.1:0")
    draining, stopping = start_writer(broker), start_writer(broker)
    assert broker.api is not None
    for api, path in ((draining.api, "/drain"), (stopping.api, "/stop"), (broker.api, "/drain")):
        reply = requests.post(api + path, timeout=10)
        assert reply.status_code == 202, reply.text
        assert reply.json()["state"] in ("draining", "stopping")
    assert (draining.proc.wait(30), stopping.proc.wait(30), broker.proc.wait(30)) == (0, 0, 0)


def test_a_token_is_required_when_configured_and_never_shown(start_broker: Callable[..., Broker],
                                                             tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    broker = start_broker("--set", "rest.address=127.0.0.1:0", "--set", f'rest.token={{"$file": "{secret}"}}')
    assert broker.api is not None
    for path in ("/status", "/metrics", "/openapi.json", "/nothing"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            assert requests.get(broker.api + path, headers=headers, timeout=10).status_code == 401
    assert requests.post(broker.api + "/stop", timeout=10).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert _json(broker.api + "/config", headers=good)["rest"]["token"] == "***"
    assert _json(broker.api + "/openapi.json", headers=good)["security"] == [{"bearer": []}]
    assert "hidra_databuffer_broker_runs_total" in _metrics(broker.api, headers=good)
    assert broker.proc.poll() is None


@pytest.mark.parametrize("module", ["hidra_databuffer.broker.main", "hidra_databuffer.dbwriter.main"])
def test_an_api_bound_off_loopback_without_a_token_refuses_to_start(module: str, tmp_path: Path) -> None:
    args = ["tcp://127.0.0.1:1", "-1"] if "dbwriter" in module else ["--rest_port", "0", "--output_port", "0",
                                                                      "--audit_file", str(tmp_path / "audit.log")]
    done = subprocess.run([sys.executable, "-m", module, *args, "--set", "rest.address=0.0.0.0:0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "rest.address" in done.stderr and "token" in done.stderr, done.stderr
