"""Each worker's endpoints of a one-host receiver group (``receiver.workers``), and what ``hidra up`` tells its
sender: one function for both (``hidra_core.receiver.group``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hidra_core import ConfigError
from hidra_core.cli.main import main
from hidra_core.config import ReceiverConfig
from hidra_core.receiver.group import WorkerEndpoints, sender_overrides, worker_endpoints


def _plan(**fields: object) -> list[WorkerEndpoints]:
    return worker_endpoints(ReceiverConfig.model_validate(fields), "group.yaml")


def _refusal(**fields: object) -> str:
    with pytest.raises(ConfigError) as info:
        _plan(**fields)
    assert info.value.source == "group.yaml"
    return str(info.value)


def test_worker_i_gets_the_data_and_confirmation_ports_plus_i_and_only_worker_0_the_status_port() -> None:
    assert _plan(workers=3) == [
        WorkerEndpoints("tcp://127.0.0.1:50100", "tcp://127.0.0.1:50053", "tcp://127.0.0.1:50050",
                        "tcp://127.0.0.1:50081"),
        WorkerEndpoints("tcp://127.0.0.1:50101", "tcp://127.0.0.1:50054", None, "tcp://127.0.0.1:50082"),
        WorkerEndpoints("tcp://127.0.0.1:50102", "tcp://127.0.0.1:50055", None, "tcp://127.0.0.1:50083")]


def test_ephemeral_ports_stay_ephemeral_for_every_worker() -> None:
    plan = _plan(workers=2, data="tcp://127.0.0.1:0", confirmations="tcp://*:*", status=None)
    assert [(w.data, w.confirmations, w.status) for w in plan] == [("tcp://127.0.0.1:0", "tcp://*:*", None)] * 2


def test_ipc_paths_get_the_worker_number_appended() -> None:
    plan = _plan(workers=3, data="ipc:///run/hidra/data", confirmations="ipc:///run/hidra/conf")
    assert [w.data for w in plan] == ["ipc:///run/hidra/data", "ipc:///run/hidra/data.1", "ipc:///run/hidra/data.2"]
    assert plan[2].confirmations == "ipc:///run/hidra/conf.2"


def test_inproc_endpoint_is_refused_naming_the_key() -> None:
    text = _refusal(workers=2, confirmations="inproc://conf")
    assert "receiver.confirmations: inproc://conf: an inproc endpoint is reachable only inside one process" in text


def test_endpoint_of_another_transport_is_refused_naming_the_key() -> None:
    assert "receiver.data: udp://host:5: only tcp (port + i) and ipc (path.i) endpoints" in _refusal(
        workers=2, data="udp://host:5")


def test_ports_past_65535_are_refused() -> None:
    assert "receiver.data: tcp://127.0.0.1:65535: ports 65535-65536" in _refusal(workers=2,
                                                                                  data="tcp://127.0.0.1:65535")


def test_data_range_reaching_the_confirmation_port_is_refused_naming_both_keys() -> None:
    text = _refusal(workers=48)  # the defaults: data 50100-50147 and confirmations 50053-50100
    assert "receiver.confirmations: worker 47 would bind tcp://127.0.0.1:50100, which worker 0 binds as" \
           " receiver.data" in text, text
    assert "these must not overlap: receiver.data tcp://127.0.0.1:50100-50147, receiver.confirmations" \
           " tcp://127.0.0.1:50053-50100, receiver.status tcp://127.0.0.1:50050," in text, text


def test_wildcard_host_clashes_with_a_port_of_any_host_but_other_hosts_do_not() -> None:
    text = _refusal(workers=2, data="tcp://*:6000", confirmations="tcp://127.0.0.1:6001")
    assert "receiver.data: worker 1 would bind tcp://*:6001, which worker 0 binds as receiver.confirmations" in text
    assert len(_plan(workers=2, data="tcp://10.0.0.1:6000", confirmations="tcp://10.0.0.2:6001")) == 2


def test_status_port_inside_the_data_range_is_refused() -> None:
    assert "receiver.status" in _refusal(workers=3, data="tcp://127.0.0.1:7000", status="tcp://127.0.0.1:7002")


def test_sender_of_hidra_up_gets_every_workers_endpoints_on_loopback() -> None:
    cfg = ReceiverConfig(workers=2, data="tcp://0.0.0.0:7000", confirmations="tcp://127.0.0.1:7100")
    assert sender_overrides(cfg, "<defaults>") == [
        'sender.storage.data=["tcp://127.0.0.1:7000", "tcp://127.0.0.1:7001"]',
        'sender.storage.confirmations=["tcp://127.0.0.1:7100", "tcp://127.0.0.1:7101"]']


def test_hidra_up_with_workers_refuses_an_ephemeral_port_it_cannot_tell_the_sender() -> None:
    with pytest.raises(ConfigError, match="receiver.data: tcp://127.0.0.1:0: an ephemeral port cannot be told"):
        sender_overrides(ReceiverConfig(workers=2, data="tcp://127.0.0.1:0"), "<defaults>")


def test_config_check_refuses_a_group_whose_ports_overlap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t").mkdir()
    path = tmp_path / "receiver.yaml"
    path.write_text(f"receiver: {{target: {tmp_path / 't'}, workers: 2, data: 'tcp://127.0.0.1:7000',"
                    " confirmations: 'tcp://127.0.0.1:7001'}\n")
    assert main(["config", "check", str(path)]) == 2
    assert "receiver.data: worker 1 would bind tcp://127.0.0.1:7001, which worker 0 binds as receiver.confirmations" \
        in capsys.readouterr().err
