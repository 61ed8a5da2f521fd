"""SIMPLON REST of hidra-eiger-sim, over real HTTP against the console script in its own process."""
from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable

import pytest
import zmq

from conftest import Sim


@pytest.mark.parametrize("version", ["1.6.0", "1.8.0"])
def test_version_discovery_reports_the_configured_simplon_version(start_sim: Callable[..., Sim],
                                                                  version: str) -> None:
    sim = start_sim("--api-version", version)
    for module in ("detector", "stream"):
        for path in (f"/{module}/api/version/", f"/{module}/api/version"):
            assert sim.ok("GET", path) == {"value": version, "value_type": "string"}
    other = "1.8.0" if version == "1.6.0" else "1.6.0"
    status, body = sim.call("GET", f"/detector/api/{other}/config/nimages")
    assert status == 404 and version in body["error"]
    # capabilities follow the version: Stream V2 (stream format) only from 1.8 on
    status, _ = sim.call("GET", f"/stream/api/{version}/config/format")
    assert status == (200 if version == "1.8.0" else 404)


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim("--api-version", "1.8.0")


def test_config_and_status_are_value_objects(sim: Sim) -> None:
    nimages = sim.ok("GET", "/detector/api/1.8.0/config/nimages")
    assert nimages["value_type"] == "uint" and nimages["access_mode"] == "rw" and nimages["min"] == 1
    assert sim.ok("GET", "/detector/api/1.8.0/config/compression")["allowed_values"] == ["lz4", "bslz4", "none"]
    assert sim.ok("GET", "/detector/api/1.8.0/config/x_pixels_in_detector") == {
        "value": 64, "value_type": "uint", "access_mode": "r"}
    assert sim.ok("GET", "/detector/api/1.8.0/status/state")["value"] == "idle"
    assert sim.ok("GET", "/detector/api/1.8.0/status/builder/dcu_buffer_free")["unit"] == "%"
    assert sim.ok("GET", "/stream/api/1.8.0/status/dropped")["value"] == 0
    assert "header_detail" in sim.ok("GET", "/stream/api/1.8.0/config/keys")


def test_put_returns_the_parameters_it_changed(sim: Sim) -> None:
    assert sim.put("detector", "photon_energy", 12000.0) == ["photon_energy", "threshold_energy", "wavelength"]
    assert sim.ok("GET", "/detector/api/1.8.0/config/threshold_energy")["value"] == 6000.0
    sim.put("detector", "frame_time", 0.01)
    assert sim.put("detector", "count_time", 0.5) == ["count_time", "frame_time"]
    assert sim.put("detector", "count_time", 0.001) == ["count_time"]  # frame_time still long enough
    assert sim.put("stream", "mode", "enabled") == ["mode"]
    assert sim.ok("GET", "/stream/api/1.8.0/status/state")["value"] == "ready"
    bulk = sim.ok("PUT", "/stream/api/1.8.0/config", {"header_detail": {"value": "none"},
                                                       "mode": {"value": "disabled"}})
    assert bulk == ["header_detail", "mode"]
    assert sim.ok("GET", "/stream/api/1.8.0/status/state")["value"] == "disabled"


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/detector/api/1.8.0/config/no_such_param", {"value": 1}, 404, "no_such_param"),
    ("/detector/api/1.8.0/config/nimages", {"value": "ten"}, 400, "nimages takes a uint"),
    ("/detector/api/1.8.0/config/nimages", {"value": True}, 400, "nimages takes a uint"),
    ("/detector/api/1.8.0/config/nimages", {"value": 0}, 400, "outside"),
    ("/detector/api/1.8.0/config/count_time", {"value": "0.1"}, 400, "count_time takes a float"),
    ("/detector/api/1.8.0/config/compression", {"value": "zstd"}, 400, "not one of"),
    ("/detector/api/1.8.0/config/x_pixels_in_detector", {"value": 10}, 403, "read-only"),
    ("/detector/api/1.8.0/config/nimages", {"val": 3}, 400, '"value"'),
    ("/detector/api/1.8.0/config", {"nimages": {"value": 2}, "bogus": {"value": 1}}, 404, "bogus"),
    ("/detector/api/1.8.0/command/explode", None, 404, "explode"),
    ("/nomodule/api/1.8.0/config/x", {"value": 1}, 404, "nomodule"),
])
def test_bad_rest_input_gets_a_clear_4xx(sim: Sim, path: str, body: object, status: int, words: str) -> None:
    before = sim.ok("GET", "/detector/api/1.8.0/config/nimages")["value"]
    got, answer = sim.call("PUT", path, body)
    assert (got, words in answer["error"]) == (status, True), answer
    assert sim.ok("GET", "/detector/api/1.8.0/config/nimages")["value"] == before  # nothing half-applied


def test_body_that_is_not_json_is_refused(sim: Sim) -> None:
    req = urllib.request.Request(sim.rest + "/detector/api/1.8.0/config/nimages", data=b"{nope", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and "not JSON" in json.loads(err.value.read())["error"]
    err.value.close()


def test_arm_trigger_disarm_flow(sim: Sim, pull: Callable[[Sim], zmq.Socket]) -> None:
    sock = pull(sim)
    for module, param, value in [("stream", "mode", "enabled"), ("stream", "format", "legacy"),
                                 ("stream", "header_detail", "none"), ("detector", "nimages", 2),
                                 ("detector", "ntrigger", 2), ("detector", "frame_time", 0.001)]:
        sim.put(module, param, value)
    status, answer = sim.call("PUT", "/detector/api/1.8.0/command/trigger")
    assert status == 409 and "arm first" in answer["error"]
    first = sim.command("arm")["sequence id"]
    assert sim.ok("GET", "/detector/api/1.8.0/status/state")["value"] == "ready"
    assert sim.call("PUT", "/detector/api/1.8.0/command/arm")[0] == 409
    sim.command("trigger")  # returns when its two images are sent, one trigger left
    assert sim.ok("GET", "/detector/api/1.8.0/status/state")["value"] == "ready"
    sim.command("disarm")
    assert sim.ok("GET", "/detector/api/1.8.0/status/state")["value"] == "idle"
    htypes = [json.loads(sock.recv_multipart()[0])["htype"] for _ in range(4)]
    assert htypes == ["dheader-1.0", "dimage-1.0", "dimage-1.0", "dseries_end-1.0"]
    # all triggers done: the series ends by itself
    assert sim.command("arm")["sequence id"] == first + 1
    sim.command("trigger")
    sim.command("trigger")
    assert sim.ok("GET", "/detector/api/1.8.0/status/state")["value"] == "idle"
    msgs = [json.loads(sock.recv_multipart()[0]) for _ in range(6)]
    assert [(m["htype"], m.get("frame")) for m in msgs] == [
        ("dheader-1.0", None), ("dimage-1.0", 0), ("dimage-1.0", 1), ("dimage-1.0", 2), ("dimage-1.0", 3),
        ("dseries_end-1.0", None)]
    assert {m["series"] for m in msgs} == {first + 1}


def _long_series_running(sim: Sim, sock: zmq.Socket) -> tuple[int, threading.Thread]:
    """Arm a 100,000-frame V1 series and trigger it in a thread; returns once its first frame arrived."""
    for module, param, value in [("stream", "mode", "enabled"), ("stream", "format", "legacy"),
                                 ("stream", "header_detail", "none"), ("detector", "nimages", 100_000),
                                 ("detector", "ntrigger", 1), ("detector", "frame_time", 0.01)]:
        sim.put(module, param, value)
    series = sim.command("arm")["sequence id"]
    trigger = threading.Thread(target=sim.command, args=("trigger",))
    trigger.start()
    assert json.loads(sock.recv_multipart()[0])["htype"] == "dheader-1.0"
    assert json.loads(sock.recv_multipart()[0])["frame"] == 0
    return series, trigger


def test_abort_stops_the_series_without_an_end_message(sim: Sim, pull: Callable[[Sim], zmq.Socket]) -> None:
    sock = pull(sim)
    series, trigger = _long_series_running(sim, sock)
    sim.command("abort")
    trigger.join(timeout=30)
    assert not trigger.is_alive()  # the blocked trigger returned
    assert sim.ok("GET", "/detector/api/1.8.0/status/state")["value"] == "idle"
    sim.put("detector", "nimages", 1)
    assert sim.command("arm")["sequence id"] == series + 1
    while (msg := json.loads(sock.recv_multipart()[0]))["htype"] == "dimage-1.0":
        assert msg["series"] == series  # images already on the wire before the abort
    assert msg == {"htype": "dheader-1.0", "series": series + 1, "header_detail": "none"}
    sim.command("disarm")
    assert json.loads(sock.recv_multipart()[0])["htype"] == "dseries_end-1.0"


def test_cancel_stops_the_series_with_its_end_message(sim: Sim, pull: Callable[[Sim], zmq.Socket]) -> None:
    sock = pull(sim)
    series, trigger = _long_series_running(sim, sock)
    sim.command("cancel")
    trigger.join(timeout=30)
    assert not trigger.is_alive()
    while (msg := json.loads(sock.recv_multipart()[0]))["htype"] == "dimage-1.0":
        assert msg["series"] == series
    assert msg == {"htype": "dseries_end-1.0", "series": series}
    assert sim.ok("GET", "/detector/api/1.8.0/status/state")["value"] == "idle"
