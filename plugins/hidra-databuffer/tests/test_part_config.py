"""Each DataBuffer part started on its own with its own YAML file and ``--set`` (issue 8): the broker and the
HDF5 writer as real subprocesses, configured by ``--config FILE`` (+ ``--set``, + flags), unknown keys refused."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dbwriter_support import Broker as PushBroker
from dbwriter_support import WriterProc, request_record

from hidra_core.testing import wait_until
from hidra_databuffer.dbwriter.fakeapi import FakeDataApi, dbw_samples


from broker_proc import Broker, command  # noqa: E402

pytestmark = pytest.mark.integration
pytest_plugins = ["broker_proc"]  # NOTE: its fixture start_broker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_broker_started_with_only_a_config_file_takes_its_ports_and_audit_file_from_it(
        start_broker: Callable[..., Broker], tmp_path: Path) -> None:
    rest_port, output_port = _free_port(), _free_port()
    config = tmp_path / "broker.yaml"
    config.write_text(f"rest_port: {rest_port}\noutput_port: {output_port}\naudit_file: {tmp_path / 'audit.log'}\n"
                      "log_level: warning\n")
    broker = start_broker("--config", str(config), audit=tmp_path / "audit.log", flags=False)
    assert (broker.rest, broker.port) == (f"http://127.0.0.1:{rest_port}", output_port)
    assert broker.status() == "stopped"
    assert (tmp_path / "audit.log").exists()  # checked for appending at start-up, so made there


def test_broker_set_overrides_the_config_file_and_a_flag_overrides_set(
        start_broker: Callable[..., Broker], tmp_path: Path) -> None:
    in_file, by_set, by_flag = _free_port(), _free_port(), _free_port()
    config = tmp_path / "broker.yaml"
    config.write_text(f"rest_port: {in_file}\noutput_port: {in_file}\naudit_file: {tmp_path / 'audit.log'}\n")
    broker = start_broker("--config", str(config), "--set", f"rest_port={by_set}", "--set",
                          f"output_port={by_set}", "--output_port", str(by_flag), flags=False)
    assert (broker.rest, broker.port) == (f"http://127.0.0.1:{by_set}", by_flag)
    assert broker.status() == "stopped"


def test_broker_config_file_with_an_unknown_key_exits_naming_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "broker.yaml"
    config.write_text(f"rest_port: 0\noutput_port: 0\naudit_file: {tmp_path / 'audit.log'}\nrest_prot: 8888\n")
    done = subprocess.run(command("--config", str(config)), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and done.stdout == ""  # never said ready
    assert str(config) in done.stderr and "rest_prot: unknown key" in done.stderr, done.stderr


@pytest.fixture
def writer_procs() -> Iterator[list[WriterProc]]:
    started: list[WriterProc] = []
    yield started
    for writer in started:
        writer.stop()


def _writer(tmp_path: Path, *args: str) -> WriterProc:
    log = tmp_path / f"writer-{time.monotonic_ns()}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "hidra_databuffer.dbwriter.main", *args], stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return WriterProc(proc, log)


def test_writer_started_with_a_config_file_and_one_set_writes_a_request(
        writer_procs: list[WriterProc], tmp_path: Path) -> None:
    push = PushBroker()
    try:
        with FakeDataApi() as api:
            config = tmp_path / "writer.yaml"
            # NOTE: the file's data API is dead: only the --set one answers, so a written file proves the override
            config.write_text(f"connect_address: {push.address}\nuser_id: -1\n"
                              f"data_api_url: http://127.0.0.1:{_free_port()}/query\nlog_level: info\n")
            writer = _writer(tmp_path, "--config", str(config), "--set", f"data_api_url={api.url}")
            writer_procs.append(writer)
            wait_until(lambda: "writer ready" in writer.text() or writer.proc.poll() is not None,
                       what="the writer's ready line")
            assert writer.proc.poll() is None, writer.text()
            assert f"pull {push.address}, data api {api.url}" in writer.text()
            output = tmp_path / "out" / "run1.h5"
            push.send(request_record([ch.name for ch in dbw_samples()], 1000, 1009, str(output)))
            wait_until(output.exists, what="run1.h5 written by the writer configured from its file")
    finally:
        push.close()


def test_writer_config_file_with_an_unknown_key_exits_naming_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "writer.yaml"
    config.write_text("connect_address: tcp://127.0.0.1:12500\nuser_id: -1\nretrys: 3\n")
    done = subprocess.run([sys.executable, "-m", "hidra_databuffer.dbwriter.main", "--config", str(config),
                           "--set", "queue_size=0"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "writer ready" not in done.stderr
    assert str(config) in done.stderr and "retrys: unknown key" in done.stderr, done.stderr
    assert "queue_size: Input should be greater than or equal to 1" in done.stderr  # the --set value, named too
