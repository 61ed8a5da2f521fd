"""``hidra-databuffer-replay`` (databuffer.md §7): requests from ``.err`` files and audit lines, re-run here or
re-injected into a PUSH stream for writers; the results equal a direct run."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from dbwriter_support import Broker, WriterProc, audit_line, content, request_record, start_writer

from hidra_core.testing import wait_until
from hidra_databuffer.dbwriter.fakeapi import FakeDataApi, dbw_samples
from hidra_databuffer.dbwriter.request import WriteRequest
from hidra_databuffer.dbwriter.service import WriterOptions, write_file

pytestmark = pytest.mark.integration
CHANNELS = [ch.name for ch in dbw_samples()]


@pytest.fixture(scope="module")
def api() -> Iterator[FakeDataApi]:
    with FakeDataApi() as fake:
        yield fake


def _replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hidra_databuffer.dbwriter.replay", *args], capture_output=True,
                          text=True, timeout=120)


def _direct(record: dict[str, object], path: Path, url: str) -> Path:
    write_file(WriteRequest.from_record(record).with_output_file(str(path)), WriterOptions(data_api_url=url))
    return path


def test_replay_of_an_err_file_left_by_the_writer_writes_what_a_direct_run_writes(api: FakeDataApi,
                                                                                  tmp_path: Path) -> None:
    broker = Broker()
    writer = start_writer(tmp_path, broker.address, api.url)
    try:
        api.answer = {"status": 500, "error": "buffer not ready"}
        output = tmp_path / "run" / "scan.h5"
        record = request_record(CHANNELS, 1000, 1019, str(output), output_file_format="extended")
        broker.send(record)
        err = wait_until(lambda: next((tmp_path / "run").glob("*.err"), None) if (tmp_path / "run").exists()
                         else None, what="scan.h5.err")
    finally:
        api.answer = None
        writer.stop()
        broker.close()
    result = _replay(str(err), "--data_api_url", api.url)
    assert result.returncode == 0, result.stderr
    assert content(output) == content(_direct(record, tmp_path / "direct.h5", api.url))


def test_replay_selects_by_line_or_output_file_and_can_redirect(api: FakeDataApi, tmp_path: Path) -> None:
    records = [request_record(CHANNELS[:3], 1000, 1000 + n, str(tmp_path / f"r{n}.h5")) for n in range(3)]
    audit = tmp_path / "audit.log"
    audit.write_text("".join(audit_line(r) + "\n" for r in records))
    assert _replay(str(audit), "--line", "2", "--data_api_url", api.url).returncode == 0
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["r1.h5"]
    assert _replay(str(audit), "--match", str(tmp_path / "r2.h5"), "--output-file", str(tmp_path / "x.h5"),
                   "--data_api_url", api.url).returncode == 0
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["r1.h5", "x.h5"]
    assert content(tmp_path / "x.h5") == content(_direct(records[2], tmp_path / "d2.h5", api.url))
    assert _replay(str(audit), "--data_api_url", api.url).returncode == 0  # every line
    assert {"r0.h5", "r1.h5", "r2.h5"} <= {p.name for p in tmp_path.glob("*.h5")}


@pytest.mark.parametrize(("text", "words"), [
    ("{\"data_api_request\": \"{}\"}", "not an audit line"),
    ("[20240131-142501] {\"parameters\": \"{}\"}", "lacks ['data_api_request', 'timestamp']"),
    ("[20240131-142501] {\"data_api_request\": \"{\", \"parameters\": \"{}\", \"timestamp\": 1}",
     "data_api_request is not JSON"),
])
def test_replay_names_what_is_wrong_with_a_bad_line(tmp_path: Path, text: str, words: str) -> None:
    bad = tmp_path / "bad.err"
    bad.write_text(text)
    result = _replay(str(bad))
    assert result.returncode == 2 and words in result.stderr and "bad.err:1" in result.stderr


def test_replay_fails_loudly_when_the_data_api_still_fails(tmp_path: Path) -> None:
    with FakeDataApi() as api:
        api.answer = {"status": 500}
        record = request_record(CHANNELS[:1], 1000, 1001, str(tmp_path / "still.h5"))
        (tmp_path / "still.h5.err").write_text(audit_line(record))
        result = _replay(str(tmp_path / "still.h5.err"), "--data_api_url", api.url)
    assert result.returncode == 1 and "server error" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["still.h5.err"]


def test_replay_inject_sends_the_request_to_writers_as_a_bsread_message(api: FakeDataApi, tmp_path: Path) -> None:
    context = zmq.Context()
    probe = context.socket(zmq.PUSH)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    context.term()  # NOTE: term waits until the probe's port is released before replay binds it
    endpoint = f"tcp://127.0.0.1:{port}"
    writer: WriterProc = start_writer(tmp_path, endpoint, api.url)
    try:
        record = request_record(CHANNELS, 1000, 1010, str(tmp_path / "injected.h5"))
        (tmp_path / "audit.log").write_text(audit_line(record) + "\n")
        result = _replay(str(tmp_path / "audit.log"), "--inject", endpoint)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: (tmp_path / "injected.h5").exists(), what="the injected request's file")
    finally:
        writer.stop()
    assert content(tmp_path / "injected.h5") == content(_direct(record, tmp_path / "direct.h5", api.url))


def test_replay_inject_without_a_writer_fails_within_the_send_timeout(tmp_path: Path) -> None:
    record = request_record(CHANNELS[:1], 1000, 1001, str(tmp_path / "nobody.h5"))
    (tmp_path / "nobody.h5.err").write_text(audit_line(record))
    result = _replay(str(tmp_path / "nobody.h5.err"), "--inject", "tcp://127.0.0.1:*", "--send_timeout_ms", "200")
    assert result.returncode == 1 and "injecting to tcp://127.0.0.1:* failed" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nobody.h5.err"]
