"""The broker's state machine, request building, channel limits and audit format without sockets (databuffer.md
§2–§5)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hidra_core import ConfigError
from hidra_databuffer.broker.audit import AuditTrail, format_line, parse_line
from hidra_databuffer.broker.config import BrokerConfig
from hidra_databuffer.broker.requests import build_requests, check_channels, images_output_file, load_channels
from hidra_databuffer.broker.state import BrokerState, Ignored, ParameterError, Run, StopError

PARAMS: dict[str, Any] = {"general/created": "c", "general/user": "u", "general/process": "p",
                          "general/instrument": "i", "output_file": "/data/run.h5"}


def _configured(start: int | None = None) -> BrokerState:
    state = BrokerState()
    state.set_parameters(dict(PARAMS))
    if start is not None:
        state.start_pulse(start)
    return state


def test_status_follows_parameters_and_start() -> None:
    state = BrokerState()
    assert state.status == "stopped"
    state.start_pulse(5)
    assert state.status == "stopped"  # NOTE: a start without parameters is remembered but not shown
    state.set_parameters(dict(PARAMS))
    assert state.status == "receiving"
    state.clear()
    assert state.status == "stopped" and state.start is None


def test_missing_parameter_names_required_and_received_and_keeps_state() -> None:
    state = _configured()
    with pytest.raises(ParameterError, match=r"general/user.*received \['general/created'"):
        state.set_parameters({k: v for k, v in PARAMS.items() if k != "general/user"})
    assert state.parameters == PARAMS
    for body in ([1], "x", None, {**PARAMS, "output_file": ""}):
        with pytest.raises(ParameterError):
            state.set_parameters(body)


def test_stop_before_start_and_duplicate_stop_are_ignored() -> None:
    state = _configured()
    assert isinstance(state.stop_pulse(3), Ignored) and state.status == "configured"
    state.start_pulse(10)
    run = state.stop_pulse(20)
    assert run == Run(10, 20, PARAMS)
    state.commit(run, {"r": 1}, "20240101-000000")
    assert state.status == "stopped" and state.last_stop == 20
    assert isinstance(state.stop_pulse(20), Ignored) and isinstance(state.stop_pulse(21), Ignored)
    assert state.statistics.n_processed_requests == 1


def test_stop_below_start_and_stop_without_parameters_are_errors_that_keep_state() -> None:
    state = _configured(10)
    with pytest.raises(StopError, match="stop_pulse_id < start_pulse_id"):
        state.stop_pulse(9)
    assert state.status == "receiving" and state.start == 10
    bare = BrokerState()
    bare.start_pulse(10)
    with pytest.raises(StopError, match="not configured"):
        bare.stop_pulse(11)
    assert bare.start == 10


def test_stop_equal_to_start_is_a_one_pulse_run() -> None:
    assert _configured(7).stop_pulse(7) == Run(7, 7, PARAMS)


def test_statistics_show_the_last_request_only_after_a_run() -> None:
    state = _configured(1)
    assert set(state.statistics.as_dict()) == {"n_processed_requests", "process_startup_time"}
    state.commit(state.stop_pulse(2), {"r": 2}, "20240101-000000")
    assert state.statistics.as_dict()["last_sent_write_request"] == {"r": 2}


def test_requests_split_cameras_and_keep_parameters_json() -> None:
    config = BrokerConfig()
    requests = build_requests(PARAMS, 1, 2, ["A", "B:FPICTURE", "C"], config, 12.5)
    assert [r["timestamp"] for r in requests] == [12.5, 12.5]
    assert requests[0]["parameters"] == json.dumps(PARAMS)
    plain, images = (json.loads(r["data_api_request"])["channels"] for r in requests)
    assert plain == [{"name": "A", "backend": "sf-databuffer"}, {"name": "C", "backend": "sf-databuffer"}]
    assert images == [{"name": "B:FPICTURE", "backend": "sf-imagebuffer"}]
    assert json.loads(requests[1]["parameters"]) == {**PARAMS, "output_file": "/data/run.IMAGES.h5"}


def test_backend_names_and_the_split_are_configurable() -> None:
    config = BrokerConfig(camera_split=False, data_backend="d", image_backend="i")
    [request] = build_requests(PARAMS, 1, 2, ["A", "B:FPICTURE"], config, 0.0)
    assert [c["backend"] for c in json.loads(request["data_api_request"])["channels"]] == ["d", "i"]


@pytest.mark.parametrize(("name", "images"), [("/d/run.h5", "/d/run.IMAGES.h5"), ("/dev/null", "/dev/null"),
                                              ("/d/run.hdf5", "/d/run.hdf5.IMAGES.h5"), ("run", "run.IMAGES.h5")])
def test_images_output_file_replaces_only_a_real_h5_suffix(name: str, images: str) -> None:
    """F4: DBW cut the last three characters whatever they were."""
    assert images_output_file(name) == images


def test_channel_limits() -> None:
    assert len(check_channels([f"C{i}" for i in range(98)] + ["A:FPICTURE", "B:FPICTURE"], "x")) == 100
    with pytest.raises(ValueError, match="101 channels, at most 100"):
        check_channels([f"C{i}" for i in range(101)], "x")
    with pytest.raises(ValueError, match="at most 2"):
        check_channels(["A:FPICTURE", "B:FPICTURE", "C:FPICTURE"], "x")
    with pytest.raises(ValueError, match="non-empty strings"):
        check_channels(["A", 3], "x")


def test_channels_file_skips_blank_and_comment_lines_and_refuses_over_limit(tmp_path: Path) -> None:
    path = tmp_path / "ch.txt"
    path.write_text("# header\n\n  A:VAL  \n#B\nC:FPICTURE\n")
    assert load_channels(path) == ["A:VAL", "C:FPICTURE"]
    path.write_text("\n".join(f"X{i}:FPICTURE" for i in range(3)))
    with pytest.raises(ConfigError, match=str(path)):
        load_channels(path)
    with pytest.raises(ConfigError, match="missing"):
        load_channels(tmp_path / "missing")


def test_config_is_frozen_and_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="rest_hots"):
        BrokerConfig.model_validate({"rest_hots": "x"})
    config = BrokerConfig()
    with pytest.raises(ValidationError):
        config.model_copy().__setattr__("rest_port", 1)
    assert (config.rest_host, config.rest_port, config.output_port, config.send_timeout_ms) == (
        "127.0.0.1", 8888, 12500, 1000)
    assert config.epics_writer_url is None and config.camera_split


def test_audit_line_format_and_parse(tmp_path: Path) -> None:
    request = {"data_api_request": json.dumps({"a": 1}), "parameters": json.dumps(PARAMS), "timestamp": 1.5}
    line = format_line(request)
    stamp, back = parse_line(line)
    assert back == request and len(stamp) == 15 and line[18:] == json.dumps(request)
    trail = AuditTrail(tmp_path / "a.log")
    trail.write(request)
    trail.write(request)
    assert [parse_line(x)[1] for x in (tmp_path / "a.log").read_text().splitlines()] == [request, request]
    with pytest.raises(ValueError, match="not an audit line"):
        parse_line("{}")
