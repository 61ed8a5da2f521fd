"""The ``hidra-databuffer-writer`` process (databuffer.md §6, §7, §14 "Writer HDF5"): real subprocesses PULL-connected
to a PUSH socket on which the real ``bsread`` sender sends writing requests; a fake data API over real HTTP."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq
from dbwriter_support import Broker, WriterProc, audit_line, content, request_record, start_writer

from hidra_core.testing import wait_until
from hidra_databuffer.dbwriter.fakeapi import CAMERA, FakeDataApi, SampleChannel, dbw_samples
from hidra_databuffer.dbwriter.request import WriteRequest
from hidra_databuffer.dbwriter.service import WriterOptions, write_file

pytestmark = pytest.mark.integration
CHANNELS = [ch.name for ch in dbw_samples()]
# NOTE: big enough that the HDF5 step (temp file open until rename) lasts a few hundred milliseconds
BIG_EVENTS = 100


@pytest.fixture
def api() -> Iterator[FakeDataApi]:
    with FakeDataApi() as fake:
        yield fake


@pytest.fixture
def broker() -> Iterator[Broker]:
    push = Broker()
    yield push
    push.close()


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[list[WriterProc]]:
    started: list[WriterProc] = []
    yield started
    for writer in started:
        writer.stop()


def _dead_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # NOTE: nothing listens there any more: connection refused
    return f"http://127.0.0.1:{port}/query"


def test_writer_writes_the_range_of_a_request_sent_by_the_real_bsread_sender(
        api: FakeDataApi, broker: Broker, writers: list[WriterProc], tmp_path: Path) -> None:
    writers.append(start_writer(tmp_path, broker.address, api.url))
    record = request_record(CHANNELS, 1000, 1019, str(tmp_path / "out" / "run1.h5"))
    broker.send(record)
    wait_until(lambda: (tmp_path / "out" / "run1.h5").exists(), what="run1.h5")
    assert api.queries[0][1] == json.loads(record["data_api_request"])  # the body is the request, as sent
    write_file(WriteRequest.from_record(record).with_output_file(str(tmp_path / "direct.h5")),
               WriterOptions(data_api_url=api.url))
    assert content(tmp_path / "out" / "run1.h5") == content(tmp_path / "direct.h5")
    with h5py.File(tmp_path / "out" / "run1.h5", "r") as h5:
        assert h5[f"data/{CAMERA}/data"].shape == (3, 494, 659)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run1.h5"]  # no temp, no .err


def test_dev_null_request_is_skipped_without_query_file_or_err(api: FakeDataApi, broker: Broker,
                                                               writers: list[WriterProc], tmp_path: Path) -> None:
    writers.append(start_writer(tmp_path, broker.address, api.url))
    broker.send(request_record(CHANNELS, 1000, 1001, "/dev/null"))
    broker.send(request_record(CHANNELS[:1], 1000, 1001, str(tmp_path / "after.h5")))
    wait_until(lambda: (tmp_path / "after.h5").exists(), what="the request after /dev/null")
    assert len(api.queries) == 1  # only the second request queried
    assert not os.path.exists("/dev/null.err") and not any(Path("/dev").glob("null.tmp-*"))
    assert "skipped" in writers[0].text()


def test_retrieval_delay_counts_from_the_request_timestamp(api: FakeDataApi, broker: Broker,
                                                           writers: list[WriterProc], tmp_path: Path) -> None:
    writers.append(start_writer(tmp_path, broker.address, api.url, "--data_retrieval_delay", "10"))
    record = request_record(CHANNELS[:2], 1000, 1003, str(tmp_path / "late.h5"), age_s=9.0)
    sent = time.time()
    broker.send(record)
    wait_until(lambda: api.queries, what="the query")
    queried = api.queries[0][0]
    assert queried - sent < 2.0  # DBW rule: 10 s after the request was made, not 10 s after it arrived
    assert queried >= record["timestamp"] + 10.0 - 0.05
    wait_until(lambda: (tmp_path / "late.h5").exists(), what="late.h5")


def _check_err(record: dict[str, object], output: Path) -> None:
    err = Path(str(output) + ".err")
    wait_until(err.exists, what=f"{err}")
    text = wait_until(lambda: err.read_text(encoding="utf-8"), what="the .err content")
    assert "\n" not in text and re.match(r"^\[\d{8}-\d{6}\] \{", text)
    assert json.loads(text[18:]) == record  # the original request, inner JSON strings byte for byte
    assert sorted(p.name for p in output.parent.iterdir()) == [err.name]  # no H5, no temp


@pytest.mark.parametrize("failure", ["server down", "dict answer", "server error"])
def test_failed_query_leaves_err_with_the_original_request_and_no_h5(api: FakeDataApi, broker: Broker,
                                                                     writers: list[WriterProc], tmp_path: Path,
                                                                     failure: str) -> None:
    url = _dead_url() if failure == "server down" else api.url
    api.answer = {"status": 500, "error": "boom"} if failure == "server error" else {"channels": "no list"}
    writers.append(start_writer(tmp_path, broker.address, url))
    output = tmp_path / "out" / "failed.h5"
    record = request_record(CHANNELS, 1000, 1005, str(output))
    broker.send(record)
    _check_err(record, output)
    api.answer = None
    broker.send(request_record(CHANNELS[:1], 1000, 1001, str(tmp_path / "next.h5")))  # the loop goes on
    if failure != "server down":
        wait_until(lambda: (tmp_path / "next.h5").exists(), what="the next request's file")


def test_retries_recover_from_a_failing_query_and_leave_no_err(api: FakeDataApi, broker: Broker,
                                                               writers: list[WriterProc], tmp_path: Path) -> None:
    api.fail_first = 2
    writers.append(start_writer(tmp_path, broker.address, api.url, "--retries", "2", "--retry_backoff", "0.05"))
    broker.send(request_record(CHANNELS[:3], 1000, 1005, str(tmp_path / "retried.h5")))
    wait_until(lambda: (tmp_path / "retried.h5").exists(), what="retried.h5")
    assert len(api.queries) == 3 and sorted(p.name for p in tmp_path.glob("retried*")) == ["retried.h5"]


def test_last_retry_failing_writes_err_once(api: FakeDataApi, broker: Broker, writers: list[WriterProc],
                                            tmp_path: Path) -> None:
    api.fail_first = 100
    writers.append(start_writer(tmp_path, broker.address, api.url, "--retries", "1", "--retry_backoff", "0.05"))
    output = tmp_path / "out" / "gaveup.h5"
    record = request_record(CHANNELS[:3], 1000, 1005, str(output))
    broker.send(record)
    _check_err(record, output)
    assert len(api.queries) == 2


def test_undecodable_message_is_logged_and_the_writer_goes_on(api: FakeDataApi, broker: Broker,
                                                              writers: list[WriterProc], tmp_path: Path) -> None:
    writers.append(start_writer(tmp_path, broker.address, api.url))
    broker.sender.stream.send(b"not a bsread main header")
    broker.send(request_record(CHANNELS[:1], 1000, 1001, str(tmp_path / "ok.h5")))
    wait_until(lambda: (tmp_path / "ok.h5").exists(), what="ok.h5")
    assert "undecodable writing request" in writers[0].text()
    assert sorted(p.name for p in tmp_path.glob("*.h5*")) == ["ok.h5"]


def _big_camera(events: int) -> SampleChannel:
    image = (np.arange(494 * 659, dtype="u4") % 65536).astype("u2").reshape(494, 659)
    return SampleChannel("SARES-BIG:FPICTURE", "uint16", [659, 494], lambda p: p < 1000 + events,
                         lambda p: image + (p % 7), value_key=lambda p: p % 7)


def test_sigkill_during_a_large_write_leaves_no_file_and_replay_of_the_audit_line_writes_it(
        broker: Broker, writers: list[WriterProc], tmp_path: Path) -> None:
    with FakeDataApi([*dbw_samples(), _big_camera(BIG_EVENTS)]) as api:
        for name in ("a", "b"):
            writers.append(start_writer(tmp_path, broker.address, api.url, name=name))
        output = tmp_path / "big.h5"
        record = request_record([*CHANNELS, "SARES-BIG:FPICTURE"], 1000, 1000 + BIG_EVENTS - 1, str(output))
        (tmp_path / "audit.log").write_text(audit_line(record) + "\n")  # as the broker writes it before sending
        broker.send(record)
        temp = wait_until(lambda: next(tmp_path.glob("big.h5.tmp-*"), None), interval_s=0.001,
                          what="the temp file of the big write")
        assert temp is not None
        victim = next(w for w in writers if temp.name.endswith(f".tmp-{w.proc.pid}"))
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        assert not output.exists() and temp.exists()  # F6: only the temp, never a truncated file at output_file
        survivor = next(w for w in writers if w is not victim)
        broker.send(request_record(CHANNELS[:2], 1000, 1003, str(tmp_path / "after.h5")))
        wait_until(lambda: (tmp_path / "after.h5").exists(), what="the surviving writer's file")
        assert survivor.proc.poll() is None
        replay = subprocess.run([sys.executable, "-m", "hidra_databuffer.dbwriter.replay", str(tmp_path / "audit.log"),
                                 "--match", str(output), "--data_api_url", api.url], capture_output=True, text=True,
                                timeout=120)
        assert replay.returncode == 0, replay.stderr
        write_file(WriteRequest.from_record(record).with_output_file(str(tmp_path / "direct.h5")),
                   WriterOptions(data_api_url=api.url))
    assert content(output) == content(tmp_path / "direct.h5")
    with h5py.File(output, "r") as h5:
        assert h5["data/SARES-BIG:FPICTURE/data"].shape == (BIG_EVENTS, 494, 659)


def test_writer_receive_queue_holds_one_request_by_default() -> None:
    from hidra_databuffer.dbwriter.main import _config, _parser
    from hidra_databuffer.dbwriter.service import WriterService

    args = _config(_parser().parse_args(["tcp://127.0.0.1:1", "-1"]))
    assert args.queue_size == 1  # F10: DBW's 100 let requests pile up behind one long write
    context = zmq.Context()
    service = WriterService(context, "tcp://127.0.0.1:1", WriterOptions(), args.queue_size)
    try:
        assert service._socket.getsockopt(zmq.RCVHWM) == 1
    finally:
        service._socket.close()
        context.term()
