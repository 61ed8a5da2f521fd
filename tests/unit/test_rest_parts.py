"""The parts of the REST API that need no process: its config, the redacted config view, the metrics text."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hidra_core import ConfigError
from hidra_core.config import load_config
from hidra_core.rest.metrics import render_metrics
from hidra_core.rest.redact import redacted
from hidra_core.rest.state import Histogram


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


def test_rest_listens_on_loopback_by_default_sender_and_receiver_on_ports_of_their_own() -> None:
    config = load_config()
    assert (config.sender.rest.enabled, config.sender.rest.address, config.sender.rest.token) == (
        True, "127.0.0.1:50080", None)
    assert config.receiver.rest.address == "127.0.0.1:50081"


@pytest.mark.parametrize("address", ["0.0.0.0:50080", "10.1.2.3:8080", "[::]:50080", "detpc01:50080"])
def test_rest_off_loopback_without_a_token_is_refused_naming_the_section(address: str) -> None:
    text = _error(f"receiver.rest.address={json.dumps(address)}")
    assert f"receiver.rest: Value error, address {address} is not a loopback address: set token" in text
    given = f"receiver.rest.address={json.dumps(address)}"
    assert load_config(None, [given, "receiver.rest.token=t0ken"]).receiver.rest.token
    assert load_config(None, [given, "receiver.rest.enabled=false"])


@pytest.mark.parametrize("address", ["localhost:0", "127.0.0.2:9000", "[::1]:50080"])
def test_rest_on_any_loopback_address_needs_no_token(address: str) -> None:
    assert load_config(None, [f"sender.rest.address={json.dumps(address)}"]).sender.rest.address == address


@pytest.mark.parametrize("address", ["50080", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":50080"])
def test_rest_address_that_is_not_host_and_port_is_refused_naming_the_key(address: str) -> None:
    text = _error(f"sender.rest.address={json.dumps(address)}")
    assert f"sender.rest.address: Value error, {address!r} is not host:port" in text


def test_empty_token_is_refused() -> None:
    assert "sender.rest.token: String should have at least 1 character" in _error("sender.rest.token=''")


def test_config_view_hides_values_from_env_and_file_and_keys_named_like_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_TEST_STORAGE", "tcp://storage01:50100")
    (tmp_path / "token").write_text("t0ken-from-file\n")
    config = load_config(None, ["sender.storage.data={$env: HIDRA_TEST_STORAGE}",
                                f"sender.rest.token={{$file: {tmp_path / 'token'}}}",
                                "sender.source.inotify.path=/ramdisk/det1",
                                "receiver.rest.token=receiver-t0ken"])
    assert config.sender.rest.token == "t0ken-from-file"
    view = redacted(config, "sender")
    assert (view["sender"]["storage"]["data"], view["sender"]["rest"]["token"]) == ("***", "***")
    assert view["sender"]["source"]["inotify"]["path"] == "/ramdisk/det1" and "receiver" not in view
    assert redacted(config, "receiver")["receiver"]["rest"]["token"] == "***"
    assert redacted(load_config(), "receiver")["receiver"]["rest"]["token"] is None  # none set: nothing to hide
    assert "t0ken" not in str(view) and "storage01" not in str(view)


def test_metrics_text_parses_back_with_prometheus_clients_own_parser() -> None:
    latency = Histogram([0.01, 0.1])
    for value in (0.005, 0.05, 0.05, 3.0):
        latency.observe(value)
    snapshot = {"state": "running", "statistics": {
        "counters": {"stored": 4, "bytes": 4096, "a_new_one": 2}, "unfinished": 1, "unfinished_dropped": 0,
        "commit_backlog": 3, "durable_latency_s": latency.snapshot()}}
    families = {f.name: f for f in text_string_to_metric_families(render_metrics("receiver", snapshot, None).decode())}
    samples = {s.name + str(sorted(s.labels.items())): s.value for f in families.values() for s in f.samples}
    assert families["hidra_receiver_files_stored"].type == "counter"
    assert samples["hidra_receiver_files_stored_total[]"] == 4
    assert samples["hidra_receiver_bytes_stored_total[]"] == 4096
    assert samples["hidra_receiver_a_new_one_total[]"] == 2  # a counter added later is exported all the same
    assert samples["hidra_receiver_commit_backlog_files[]"] == 3
    assert [samples[f"hidra_receiver_durable_latency_seconds_bucket[('le', '{le}')]"]
            for le in ("0.01", "0.1", "+Inf")] == [1, 3, 4]
    assert samples["hidra_receiver_durable_latency_seconds_sum[]"] == pytest.approx(3.105)
