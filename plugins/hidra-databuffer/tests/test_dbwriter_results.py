"""Write results on the status bus (databuffer.md §1) and replay's progress display (§7): real writer subprocesses,
a real SUB socket bound on a free port, the fake data API over real HTTP."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import test_dbwriter_service as service_tests
from dbwriter_support import Broker, WriterProc, audit_line, request_record, start_writer

from hidra_core.testing import wait_until
from hidra_databuffer.dbwriter.fakeapi import FakeDataApi, dbw_samples
from hidra_databuffer.dbwriter.results import TOPIC

pytestmark = pytest.mark.integration
CHANNELS = [ch.name for ch in dbw_samples()]
# NOTE: the writer tests' fixtures: a fake data API, a broker PUSH, writer processes stopped at the end
api, broker, writers = service_tests.api, service_tests.broker, service_tests.writers
_dead_url = service_tests._dead_url


@pytest.fixture
def monitor() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    yield sub, f"tcp://127.0.0.1:{port}"
    sub.close()
    context.term()


def _next_result(sub: zmq.Socket[bytes]) -> dict[str, Any] | None:
    if not sub.poll(100):
        return None
    topic, body = sub.recv_multipart()
    assert topic == TOPIC
    result: dict[str, Any] = json.loads(body)
    return result


def _subscribed(broker: Broker, sub: zmq.Socket[bytes]) -> dict[str, Any]:
    """Send /dev/null requests until one's result arrives: from then on the writer's PUB has our subscription."""
    def probe() -> dict[str, Any] | None:
        broker.send(request_record(CHANNELS, 1000, 1000, "/dev/null"))
        return _next_result(sub)
    result = wait_until(probe, what="the result of a /dev/null probe")
    while (extra := _next_result(sub)) is not None:  # NOTE: probes sent before the first answer may still come
        assert extra["output_file"] == "/dev/null"
    return result


def test_writer_publishes_ok_result_with_channel_and_point_counts_of_the_written_file(
        api: FakeDataApi, broker: Broker, monitor: tuple[zmq.Socket[bytes], str], writers: list[WriterProc],
        tmp_path: Path) -> None:
    sub, endpoint = monitor
    writers.append(start_writer(tmp_path, broker.address, api.url, "--status_endpoint", endpoint))
    skipped = _subscribed(broker, sub)
    assert skipped | {"elapsed": 0} == {"output_file": "/dev/null", "ok": True, "n_channels": 0, "n_points": 0,
                                        "error": None, "elapsed": 0, "pid": writers[0].proc.pid}
    output = tmp_path / "run1.h5"
    broker.send(request_record(CHANNELS, 1000, 1019, str(output)))
    result = wait_until(lambda: _next_result(sub), what="the write result of run1.h5")
    assert output.exists()
    # NOTE: what the fake API serves for this range, channel by channel (NODATA: a config, no events)
    served = {ch.name: sum(ch.has(pid) for pid in range(1000, 1020)) for ch in dbw_samples()}
    assert {k: result[k] for k in ("output_file", "ok", "error", "n_channels", "n_points")} == {
        "output_file": str(output), "ok": True, "error": None, "n_channels": len(served),
        "n_points": sum(served.values())}
    assert result["elapsed"] > 0


def test_writer_publishes_failed_result_with_the_error_and_still_writes_the_err_file(
        broker: Broker, monitor: tuple[zmq.Socket[bytes], str], writers: list[WriterProc], tmp_path: Path) -> None:
    sub, endpoint = monitor
    writers.append(start_writer(tmp_path, broker.address, _dead_url(), "--status_endpoint", endpoint))
    _subscribed(broker, sub)
    output = tmp_path / "down.h5"
    broker.send(request_record(CHANNELS, 1000, 1001, str(output)))
    result = wait_until(lambda: _next_result(sub), what="the write result of down.h5")
    assert result["output_file"] == str(output) and result["ok"] is False
    assert (result["n_channels"], result["n_points"]) == (0, 0)
    assert "refused" in result["error"].lower() or "connect" in result["error"].lower(), result["error"]
    assert Path(f"{output}.err").exists() and not output.exists()


def test_writer_without_status_endpoint_has_the_bus_off_and_writes_as_before(
        api: FakeDataApi, broker: Broker, writers: list[WriterProc], tmp_path: Path) -> None:
    writers.append(start_writer(tmp_path, broker.address, api.url))
    assert "status off" in writers[0].text()  # NOTE: no PUB socket at all: nothing is published anywhere
    broker.send(request_record(CHANNELS, 1000, 1005, str(tmp_path / "quiet.h5")))
    wait_until(lambda: (tmp_path / "quiet.h5").exists(), what="quiet.h5")
    assert sorted(p.name for p in tmp_path.glob("quiet*")) == ["quiet.h5"]
    assert "not published" not in writers[0].text()


def _replay_lines(tmp_path: Path, n: int) -> Path:
    audit = tmp_path / "audit.log"
    audit.write_text("\n".join(audit_line(request_record(CHANNELS[:3], 1000, 1003, str(tmp_path / f"r{i}.h5")))
                               for i in range(n)) + "\n")
    return audit


def test_replay_of_several_requests_logs_one_counted_line_each_when_stderr_is_not_a_terminal(
        api: FakeDataApi, tmp_path: Path) -> None:
    audit = _replay_lines(tmp_path, 3)
    result = subprocess.run([sys.executable, "-m", "hidra_databuffer.dbwriter.replay", str(audit), "--data_api_url",
                             api.url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for i in range(3):
        assert f"[{i + 1}/3] wrote {tmp_path / f'r{i}.h5'}" in result.stderr
    assert "━" not in result.stderr


def test_replay_of_several_requests_shows_a_progress_bar_when_stderr_is_a_terminal(
        api: FakeDataApi, tmp_path: Path) -> None:
    audit = _replay_lines(tmp_path, 3)
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "hidra_databuffer.dbwriter.replay", str(audit),
                             "--data_api_url", api.url], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=slave, env=env)
    os.close(slave)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # NOTE: EIO once the child closed the terminal's last slave end
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        assert proc.wait(120) == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert "replay" in text and "3/3" in text and "━" in text, text
    assert all((tmp_path / f"r{i}.h5").exists() for i in range(3))
