"""The writing request on the wire and in the audit trail, end to end (databuffer.md §14 "Request and transport",
audit items): the broker as a subprocess, writers as real PULL sockets decoded by bsread."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import zmq

from hidra_core.testing import wait_until


from broker_proc import AUDIT_LINE, PARAMS, Broker, Writer, command, request_range  # noqa: E402

pytest_plugins = ["broker_proc"]  # NOTE: its fixtures: start_broker, broker, writers

WriterFactory = Callable[[Broker], Writer]


def _channels_file(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "channels.txt"
    path.write_text("# channels of the run\n\n" + "\n".join(names) + "\n")
    return path


def test_request_is_one_bsread_message_with_three_typed_channels(broker: Broker,
                                                                  zmq_context: zmq.Context[zmq.Socket[bytes]]
                                                                  ) -> None:
    pull = zmq_context.socket(zmq.PULL)
    try:
        pull.connect(f"tcp://{broker.host}:{broker.port}")
        for run in range(2):
            broker.run(10 * run, 10 * run + 5)
            assert pull.poll(10_000)
            frames = pull.recv_multipart()
            assert len(frames) == 8
            main, data = json.loads(frames[0]), json.loads(frames[1])
            assert main["htype"] == "bsr_m-1.1" and main["pulse_id"] == run
            assert set(main["global_timestamp"]) == {"sec", "ns"}
            assert data["htype"] == "bsr_d-1.1"
            assert [(c["name"], c["type"], c["shape"]) for c in data["channels"]] == [
                ("data_api_request", "string", [1]), ("parameters", "string", [1]), ("timestamp", "float64", [1])]
            assert all(len(frames[i]) == 16 for i in (3, 5, 7))  # NOTE: int64 sec + int64 ns per channel
    finally:
        pull.close()


def test_data_api_request_has_dbw_fields_and_backends_by_suffix(start_broker: Callable[..., Broker],
                                                                writers: WriterFactory, tmp_path: Path) -> None:
    names = ["SAR-CVME:VAL", "SAR-CAM:FPICTURE", "SINEG01-DBPM:X1"]
    broker = start_broker("--no_camera_split", "-c", str(_channels_file(tmp_path, names)))
    writer = writers(broker)
    broker.run(1000, 1100)
    query = json.loads(writer.receive()["data_api_request"])
    assert query == {"channels": [{"name": "SAR-CVME:VAL", "backend": "sf-databuffer"},
                                  {"name": "SAR-CAM:FPICTURE", "backend": "sf-imagebuffer"},
                                  {"name": "SINEG01-DBPM:X1", "backend": "sf-databuffer"}],
                     "range": {"startPulseId": 1000, "endPulseId": 1100},
                     "response": {"format": "json", "compression": "none"},
                     "eventFields": ["channel", "pulseId", "value", "shape", "globalDate"],
                     "configFields": ["type", "shape"]}


def test_parameters_round_trip_byte_for_byte_and_timestamp_is_now(broker: Broker, writers: WriterFactory) -> None:
    writer = writers(broker)
    params = {**PARAMS, "output_file_format": None, "extra": {"nested": [1, 2.5, "\u00e9\u4e2d"], "flag": True}}
    broker.run(5, 9, params)
    request = writer.receive()
    assert request["parameters"] == json.dumps(params)
    assert json.loads(request["parameters"]) == params
    assert isinstance(request["timestamp"], float) and abs(request["timestamp"] - time.time()) < 1


def test_channels_override_replaces_the_channels_file(start_broker: Callable[..., Broker], writers: WriterFactory,
                                                      tmp_path: Path) -> None:
    broker = start_broker("-c", str(_channels_file(tmp_path, ["FROM:FILE"])))
    writer = writers(broker)
    broker.run(1, 2)
    assert [c["name"] for c in json.loads(writer.receive()["data_api_request"])["channels"]] == ["FROM:FILE"]
    broker.run(3, 4, {**PARAMS, "channels": ["OVER:A", "OVER:B"]})
    assert [c["name"] for c in json.loads(writer.receive()["data_api_request"])["channels"]] == ["OVER:A", "OVER:B"]


def test_camera_split_sends_a_second_request_to_images_h5(start_broker: Callable[..., Broker],
                                                          writers: WriterFactory, tmp_path: Path) -> None:
    broker = start_broker("-c", str(_channels_file(tmp_path, ["A:VAL", "CAM1:FPICTURE", "B:VAL", "CAM2:FPICTURE"])))
    writer = writers(broker)
    broker.run(100, 200, {**PARAMS, "output_file": "/data/run_0001.h5"})
    first, second = writer.receive(), writer.receive()
    assert writer.nothing()
    assert [c["name"] for c in json.loads(first["data_api_request"])["channels"]] == ["A:VAL", "B:VAL"]
    assert json.loads(first["parameters"])["output_file"] == "/data/run_0001.h5"
    cameras = json.loads(second["data_api_request"])["channels"]
    assert cameras == [{"name": "CAM1:FPICTURE", "backend": "sf-imagebuffer"},
                       {"name": "CAM2:FPICTURE", "backend": "sf-imagebuffer"}]
    assert json.loads(second["parameters"])["output_file"] == "/data/run_0001.IMAGES.h5"
    assert request_range(second) == {"startPulseId": 100, "endPulseId": 200}
    last = broker.json("GET", "/statistics")["statistics"]["last_sent_write_request"]
    assert last["parameters"] == second["parameters"]
    assert len(broker.audit_lines()) == 2


def test_camera_split_of_a_channels_override_splits_it_by_suffix(broker: Broker, writers: WriterFactory) -> None:
    """F4: DBW put the whole override list into both requests."""
    writer = writers(broker)
    broker.run(1, 2, {**PARAMS, "channels": ["X:VAL", "CAM:FPICTURE"], "output_file": "/data/run.hdf5"})
    first, second = writer.receive(), writer.receive()
    assert [c["name"] for c in json.loads(first["data_api_request"])["channels"]] == ["X:VAL"]
    assert [c["name"] for c in json.loads(second["data_api_request"])["channels"]] == ["CAM:FPICTURE"]
    assert json.loads(second["parameters"])["output_file"] == "/data/run.hdf5.IMAGES.h5"


def test_no_channels_still_sends_the_first_request(broker: Broker, writers: WriterFactory) -> None:
    writer = writers(broker)
    broker.run(1, 2)
    assert json.loads(writer.receive()["data_api_request"])["channels"] == []
    assert writer.nothing()


@pytest.mark.parametrize(("names", "words"), [([f"CH:{i}" for i in range(101)], "101 channels, at most 100"),
                                              ([f"C{i}:FPICTURE" for i in range(3)], "at most 2")])
def test_over_limit_channels_file_refuses_to_start_naming_it(tmp_path: Path, names: list[str], words: str) -> None:
    """F1: DBW warned and ran with no channels at all."""
    path = _channels_file(tmp_path, names)
    done = subprocess.run(command("--rest_port", "0", "--output_port", "0", "--audit_file", str(tmp_path / "a.log"),
                                  "-c", str(path)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "ready" not in done.stdout
    assert str(path) in done.stderr and words in done.stderr, done.stderr


def test_over_limit_channels_override_is_an_error_reply(broker: Broker) -> None:
    """F1 for the override: refused when posted, the state unchanged."""
    out = broker.json("POST", "/parameters", json={**PARAMS, "channels": [f"C{i}:FPICTURE" for i in range(3)]})
    assert out["state"] == "error" and "at most 2" in out["status"], out
    out = broker.json("POST", "/parameters", json={**PARAMS, "channels": "ONE:NAME"})
    assert out["state"] == "error" and "list" in out["status"], out
    assert broker.status() == "stopped"


def test_no_writer_is_an_error_within_the_send_timeout_with_the_audit_line_and_still_receiving(
        start_broker: Callable[..., Broker], writers: WriterFactory) -> None:
    broker = start_broker("--send_timeout_ms", "300")
    began = time.monotonic()
    out = broker.run(10, 20).json()
    elapsed = time.monotonic() - began
    assert out["state"] == "error" and "Resource temporarily unavailable" in out["status"], out
    assert 0.3 <= elapsed < 30  # NOTE: lower bound exact; the upper one only says it did not hang
    assert len(broker.audit_lines()) == 1 and broker.status() == "receiving"
    stats = broker.json("GET", "/statistics")["statistics"]
    assert stats["n_processed_requests"] == 0 and "last_sent_write_request" not in stats
    writer = writers(broker)  # NOTE: a client retries the stop once a writer is back
    broker.empty("PUT", "/stop_pulse_id/20")
    assert request_range(writer.receive()) == {"startPulseId": 10, "endPulseId": 20}
    assert len(broker.audit_lines()) == 2 and broker.status() == "stopped"
    assert broker.json("GET", "/statistics")["statistics"]["n_processed_requests"] == 1


def test_retry_after_a_failed_send_re_sends_every_request_of_the_split(start_broker: Callable[..., Broker],
                                                                      writers: WriterFactory, tmp_path: Path
                                                                      ) -> None:
    broker = start_broker("--send_timeout_ms", "200", "-c", str(_channels_file(tmp_path, ["A", "C:FPICTURE"])))
    assert broker.run(1, 9).json()["state"] == "error"
    writer = writers(broker)
    broker.empty("PUT", "/stop_pulse_id/9")
    outputs = [json.loads(writer.receive()["parameters"])["output_file"] for _ in range(2)]
    assert outputs == [PARAMS["output_file"], PARAMS["output_file"].replace(".h5", ".IMAGES.h5")]
    assert writer.nothing()


def test_three_writers_share_nine_requests_three_each(broker: Broker, writers: WriterFactory) -> None:
    pool = [writers(broker) for _ in range(3)]
    for run in range(9):
        assert broker.run(run * 10, run * 10 + 1).content == b""
    counts = [0, 0, 0]
    for index, writer in enumerate(pool):
        while writer.message(1000) is not None:
            counts[index] += 1
    assert counts == [3, 3, 3]


def test_audit_trail_only_writes_the_line_and_sends_nothing(start_broker: Callable[..., Broker],
                                                            writers: WriterFactory) -> None:
    broker = start_broker("--audit_trail_only")
    writer = writers(broker)
    assert broker.run(40, 50).content == b""
    assert writer.nothing()
    [line] = broker.audit_lines()
    assert request_range(json.loads(line[18:])) == {"startPulseId": 40, "endPulseId": 50}
    assert broker.status() == "stopped"


def test_audit_write_failure_is_an_error_and_nothing_is_sent(broker: Broker, writers: WriterFactory) -> None:
    """F5: DBW only logged the failure and sent anyway, leaving no record to replay from."""
    writer = writers(broker)
    broker.audit.unlink()
    broker.audit.mkdir()  # NOTE: appending to a directory fails even as root
    out = broker.run(1, 5).json()
    assert out["state"] == "error" and str(broker.audit) in out["status"], out
    assert writer.nothing() and broker.status() == "receiving"


# --- audit trail ------------------------------------------------------------------------------------------------------

def test_audit_lines_are_dbw_format_with_two_inner_json_strings(broker: Broker, writers: WriterFactory) -> None:
    writer = writers(broker)
    broker.run(1, 2)
    sent = writer.receive()
    [line] = broker.audit.read_text().split("\n")[:-1]
    assert AUDIT_LINE.match(line) and line[16:18] == "] "
    request = json.loads(line[18:])
    assert set(request) == {"data_api_request", "parameters", "timestamp"}
    assert isinstance(request["data_api_request"], str) and isinstance(request["parameters"], str)
    assert request["data_api_request"] == sent["data_api_request"] and request["parameters"] == sent["parameters"]
    assert json.loads(request["parameters"]) == PARAMS and request_range(request)["endPulseId"] == 2
    assert time.strftime("%Y%m%d", time.localtime(request["timestamp"])) == line[1:9]


def test_audit_trail_appends_across_restarts(start_broker: Callable[..., Broker], writers: WriterFactory,
                                             tmp_path: Path) -> None:
    audit = tmp_path / "kept.log"
    audit.write_text("[20240131-142501] {\"data_api_request\": \"{}\", \"parameters\": \"{}\", \"timestamp\": 1.0}\n")
    for start in (10, 20):
        broker = start_broker("--audit_trail_only", audit=audit)
        broker.run(start, start + 1)
        with pytest.raises(requests.ConnectionError):
            broker.call("GET", "/kill")
        assert broker.proc.wait(timeout=30) == 0
    lines = audit.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("[20240131-142501] ")
    assert [request_range(json.loads(line[18:]))["startPulseId"] for line in lines[1:]] == [10, 20]
    assert all(AUDIT_LINE.match(line) for line in lines)


def test_console_script_is_installed_and_has_help() -> None:
    script = Path(sys.executable).parent / "hidra-databuffer-broker"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert all(flag in done.stdout for flag in ("--channels_file", "--output_port", "--queue_length", "--rest_port",
                                                "--audit_trail_only", "--audit_file", "--send_timeout_ms",
                                                "--epics_writer_url", "--rest_host"))


class _Epics(BaseHTTPRequestHandler):
    bodies: list[Any] = []

    def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_epics_side_channel_gets_the_range_and_parameters_only_when_configured(start_broker: Callable[..., Broker],
                                                                                writers: WriterFactory) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Epics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/epics"
        broker = start_broker("--epics_writer_url", url)
        writer = writers(broker)
        broker.run(3, 4)
        assert writer.receive()
        wait_until(lambda: _Epics.bodies, what="the EPICS writer PUT")
        assert _Epics.bodies == [{"range": {"startPulseId": 3, "endPulseId": 4}, "parameters": PARAMS}]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert broker.run(5, 6).content == b""  # NOTE: the EPICS writer is gone now: only logged, the run still goes
    assert request_range(writer.receive()) == {"startPulseId": 5, "endPulseId": 6}
