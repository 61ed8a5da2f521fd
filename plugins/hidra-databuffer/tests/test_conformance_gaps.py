"""databuffer.md §14 items that no other test asserted (see CONFORMANCE.md): the writer and replay against the real
local data buffer instead of the fake data API, the whole broker -> writers chain around a SIGKILL, the writer's
default of no retries (F9), and a real bsread stream through a ``hidra databuffer buffer`` process."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import requests
import zmq
from dbwriter_support import Broker as Push
from dbwriter_support import WriterProc, audit_line, content, request_record, start_writer
from up_proc import buffer_sets, free_ports, terminate
from test_dbwriter_service import BIG_EVENTS, _big_camera, _check_err, _dead_url
from test_store_query import SEC, make_pulse, seconds_of, store

from hidra_core import create_driver
from hidra_core.testing import wait_until
from hidra_databuffer.dbwriter.fakeapi import FakeDataApi, dbw_samples
from hidra_databuffer.dbwriter.request import WriteRequest
from hidra_databuffer.dbwriter.service import WriterOptions, write_file


from broker_proc import PARAMS, Broker  # noqa: E402

pytest_plugins = ["broker_proc"]  # NOTE: its fixtures: start_broker, broker, writers

pytestmark = pytest.mark.integration
BUFFERED = ["B:F8", "B:I4", "B:WAVE", "B:IMG"]


def _buffered_pulse(pid: int) -> tuple[dict[str, Any], bytes]:
    image = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) + pid).astype(np.uint16)
    return make_pulse(pid, {"B:F8": ("float64", [1], pid / 8), "B:I4": ("int32", [1], None if pid % 3 else -pid),
                            "B:WAVE": ("float32", [16], np.arange(16, dtype=np.float32) * pid),
                            "B:IMG": ("uint16", [64, 32], image if pid % 2 else None)}, ns=pid * 11)


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[Any]:
    """The real ``databuffer`` writer (store + query API over HTTP) holding pulses 1000..1039 with a hole."""
    writer = create_driver("writer", "databuffer", {"http_port": 0, "query_wait_s": 0}, "<test>",
                           "receiver.databuffer", target=str(tmp_path))
    writer.start()
    try:
        store(writer, [_buffered_pulse(pid) for pid in [*range(1000, 1010), *range(1025, 1040)]])
        yield writer
    finally:
        writer.shutdown()


@pytest.fixture
def push() -> Iterator[Push]:
    sender = Push()
    yield sender
    sender.close()


def _replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hidra_databuffer.dbwriter.replay", *args], capture_output=True,
                          text=True, timeout=120)


def test_end_before_start_is_400_from_the_buffer_and_the_writer_leaves_err_and_no_h5(
        buffer: Any, push: Push, tmp_path: Path) -> None:
    output = tmp_path / "out" / "reversed.h5"
    record = request_record(BUFFERED, 1030, 1005, str(output))
    reply = requests.post(buffer.url, data=record["data_api_request"], timeout=30)
    assert reply.status_code == 400 and "< range.start" in reply.json()["error"], reply.text
    writer = start_writer(tmp_path, push.address, buffer.url)
    try:
        push.send(record)
        _check_err(record, output)  # one line, no newline, the original request; no H5, no temp
    finally:
        writer.stop()


def test_replay_of_err_and_of_audit_line_against_the_buffer_equals_a_direct_run(buffer: Any, push: Push,
                                                                                tmp_path: Path) -> None:
    output = tmp_path / "run" / "scan.h5"
    record = request_record(BUFFERED, 1003, 1030, str(output), output_file_format="extended")
    writer = start_writer(tmp_path, push.address, _dead_url())  # NOTE: buffer unreachable -> .err
    try:
        push.send(record)
        _check_err(record, output)
    finally:
        writer.stop()
    direct = tmp_path / "direct.h5"
    write_file(WriteRequest.from_record(record).with_output_file(str(direct)), WriterOptions(data_api_url=buffer.url))
    result = _replay(f"{output}.err", "--data_api_url", buffer.url)
    assert result.returncode == 0, result.stderr
    (tmp_path / "audit.log").write_text(audit_line(record) + "\n")
    from_audit = tmp_path / "from_audit.h5"
    result = _replay(str(tmp_path / "audit.log"), "--output-file", str(from_audit), "--data_api_url", buffer.url)
    assert result.returncode == 0, result.stderr
    assert content(output) == content(direct) == content(from_audit)
    with h5py.File(direct, "r") as h5:  # NOTE: the range really came from the buffer, hole and all
        assert h5["data/B:F8/pulse_id"][()].tolist() == [*range(1003, 1010), *range(1025, 1031)]


def test_writer_without_retries_queries_once_then_writes_err(push: Push, tmp_path: Path) -> None:
    """F9: the default is 0 retries (DBW parity): one failed query is final."""
    with FakeDataApi() as api:
        api.fail_first = 1
        writer = start_writer(tmp_path, push.address, api.url)
        try:
            output = tmp_path / "out" / "once.h5"
            record = request_record([ch.name for ch in dbw_samples()][:2], 1000, 1003, str(output))
            push.send(record)
            _check_err(record, output)
            push.send(request_record(["SAR-CVME-TIFALL5:INT32"], 1000, 1001, str(tmp_path / "next.h5")))
            wait_until(lambda: (tmp_path / "next.h5").exists(), what="the next request's file")
        finally:
            writer.stop()
        assert len(api.queries) == 2  # the failed request once, the next one once: no retry in between


def test_sigkilled_writer_behind_the_real_broker_leaves_no_file_and_the_broker_audit_line_replays_it(
        start_broker: Callable[..., Broker], tmp_path: Path) -> None:
    broker = start_broker("--no_camera_split", "--send_timeout_ms", "20000")
    channels = [*(ch.name for ch in dbw_samples()), "SARES-BIG:FPICTURE"]
    writers: list[WriterProc] = []
    with FakeDataApi([*dbw_samples(), _big_camera(BIG_EVENTS)]) as api:
        try:
            for name in ("a", "b"):
                writers.append(start_writer(tmp_path, f"tcp://{broker.host}:{broker.port}", api.url, name=name))
            output = tmp_path / "big.h5"
            reply = broker.run(1000, 1000 + BIG_EVENTS - 1, {**PARAMS, "output_file": str(output),
                                                             "channels": channels})
            assert reply.content == b"", reply.text
            temp = wait_until(lambda: next(tmp_path.glob("big.h5.tmp-*"), None), interval_s=0.001,
                              what="the temp file of the big write")
            assert temp is not None
            victim = next(w for w in writers if temp.name.endswith(f".tmp-{w.proc.pid}"))
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            assert not output.exists()  # F6: never a truncated file at output_file
            [line] = broker.audit_lines()  # the broker audited before it sent
            assert json.loads(json.loads(line[18:])["parameters"])["output_file"] == str(output)
            after = tmp_path / "after.h5"
            broker.run(1000, 1003, {**PARAMS, "output_file": str(after), "channels": channels[:2]})
            wait_until(after.exists, what="the surviving writer's file")
            assert all(w.proc.poll() is None for w in writers if w is not victim)
            result = _replay(str(broker.audit), "--match", str(output), "--data_api_url", api.url)
            assert result.returncode == 0, result.stderr
            record = json.loads(line[18:])
            direct = tmp_path / "direct.h5"
            write_file(WriteRequest.from_record(record).with_output_file(str(direct)),
                       WriterOptions(data_api_url=api.url))
        finally:
            for writer in writers:
                writer.stop()
    assert content(output) == content(direct)
    with h5py.File(output, "r") as h5:
        assert h5["data/SARES-BIG:FPICTURE/data"].shape == (BIG_EVENTS, 494, 659)


def test_broker_rest_listens_on_loopback_by_default(broker: Broker) -> None:
    """F11: DBW hard-coded a site host; ours is --rest_host 127.0.0.1 unless configured (the fixture sets none)."""
    assert broker.rest.startswith("http://127.0.0.1:"), broker.rest
    assert broker.status() == "stopped"


# --- a real bsread stream through the buffer process -----------------------------------------------------------------
FIRST, LAST, HOLE = 1000, 1999, range(1100, 1150)
STREAM = {"G:F8": {"type": "float64"}, "G:I4": {"type": "int32"}, "G:STR": {"type": "string"},
          "G:WAVE": {"type": "float32", "shape": [1024]},
          "G:IMG": {"type": "uint16", "shape": [512, 512], "compression": "bitshuffle_lz4"}}


def _delivered(pid: int) -> bool:
    """All pulses at first, then a 50-pulse hole, then every 4th pulse only."""
    return pid not in HOLE and (pid < HOLE.start or pid % 4 == 0)


def _values(pid: int) -> dict[str, Any]:
    return {"G:F8": pid / 7, "G:I4": None if pid % 3 == 0 else -pid, "G:STR": f"pulse {pid} µ",
            "G:WAVE": np.arange(1024, dtype=np.float32) + pid,
            "G:IMG": (np.arange(512 * 512, dtype=np.uint16).reshape(512, 512) + pid).astype(np.uint16)}


def _stream(port_holder: list[int], ready: threading.Event, stop: threading.Event,
            failed: list[BaseException]) -> None:
    """The real bsread sender at 100 Hz against absolute deadlines, (sec, ns) = (SEC + pid, pid * 1000 + 7)."""
    from bsread.sender import PUSH, Sender

    try:
        with Sender(port=0, address="tcp://127.0.0.1", mode=PUSH, block=True) as sender:
            for name, metadata in STREAM.items():
                sender.add_channel(name, metadata=metadata)
            port_holder.append(int(sender.stream.socket.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]))
            ready.set()
            start = None
            for pid in range(FIRST, LAST + 1):
                if stop.is_set():
                    return
                if _delivered(pid):
                    # NOTE: positional values keep the registered metadata (types, compression); data= would
                    # rebuild the header from the Python values (an int becomes int64)
                    sender.send(*_values(pid).values(), pulse_id=pid, timestamp=(SEC + pid, pid * 1000 + 7),
                                check_data=False)
                    start = start or time.monotonic()  # NOTE: the first send blocks until the buffer connects
                delay = (start or time.monotonic()) + (pid - FIRST) / 100 - time.monotonic()
                if delay > 0:
                    stop.wait(delay)  # NOTE: paces the stream at 100 Hz; a failed test stops it early
    except BaseException as error:  # noqa: BLE001 (reported by the test)
        failed.append(error)
        ready.set()


@pytest.fixture
def buffer_proc(tmp_path: Path) -> Iterator[str]:
    port: list[int] = []
    ready, stop = threading.Event(), threading.Event()
    failed: list[BaseException] = []
    thread = threading.Thread(target=_stream, args=(port, ready, stop, failed), daemon=True)
    thread.start()
    assert ready.wait(30) and not failed, failed
    query, *hidra = free_ports(6)
    sets = buffer_sets(tmp_path, hidra)
    log = open(tmp_path / "buffer.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hidra_core", "databuffer", "buffer", "--source",
                             f"tcp://127.0.0.1:{port[0]}", "--query-port", str(query),
                             *(a for s in sets for a in ("--set", s))], stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path)
    try:
        yield f"http://127.0.0.1:{query}"
        stop.set()
        thread.join(60)
        assert not failed, failed
    finally:
        stop.set()
        terminate(proc)
        log.close()


def _status(base: str) -> Any:
    try:
        return requests.get(base + "/status", timeout=5).json()
    except (requests.ConnectionError, ValueError):
        return None


@pytest.mark.slow
def test_bsread_stream_through_the_buffer_process_is_served_exactly_and_written_in_both_layouts(
        buffer_proc: str, tmp_path: Path) -> None:
    last = max(pid for pid in range(FIRST, LAST + 1) if _delivered(pid))
    wait_until(lambda: (_status(buffer_proc) or {}).get("newest_pulse_id") == last, 120,
               what="the whole stream in the buffer")
    delivered = [pid for pid in range(FIRST, LAST + 1) if _delivered(pid)]
    body = request_record(["G:F8", "G:I4", "G:STR", "G:WAVE"], FIRST, LAST, "/unused")["data_api_request"]
    f8, i4, text, wave = requests.post(buffer_proc + "/query", data=body, timeout=120).json()
    assert [e["pulseId"] for e in f8["data"]] == delivered  # exactly the delivered pulses, ascending
    assert [e["value"] for e in f8["data"]] == [pid / 7 for pid in delivered]
    assert [(e["pulseId"], e["value"]) for e in i4["data"]] == [(p, -p) for p in delivered if p % 3]
    assert [e["value"] for e in text["data"]] == [f"pulse {pid} µ" for pid in delivered]
    assert [seconds_of(e["globalDate"]) for e in f8["data"]] == [(SEC + p, p * 1000 + 7) for p in delivered]
    assert [e["configs"][0] for e in (f8, i4, text, wave)] == [
        {"type": "float64", "shape": [1]}, {"type": "int32", "shape": [1]}, {"type": "string", "shape": [1]},
        {"type": "float32", "shape": [1024]}]
    assert wave["data"][-1]["value"] == (np.arange(1024, dtype=np.float32) + delivered[-1]).tolist()
    body = request_record(["G:IMG"], 1096, 1156, "/unused")["data_api_request"]
    (image,) = requests.post(buffer_proc + "/query", data=body, timeout=120).json()
    assert image["configs"][0] == {"type": "uint16", "shape": [512, 512]}
    assert [e["pulseId"] for e in image["data"]] == [1096, 1097, 1098, 1099, 1152, 1156]
    assert len(image["data"][0]["value"]) == 262_144
    assert image["data"][0]["value"] == _values(1096)["G:IMG"].ravel().tolist()
    _check_layouts(buffer_proc + "/query", tmp_path)


def _check_layouts(url: str, tmp_path: Path) -> None:
    """Compact: each channel its own events; extended: the union, gaps marked, nothing invented (§9)."""
    names = ["G:F8", "G:I4", "G:STR", "G:WAVE", "G:IMG"]
    in_range = [p for p in range(1094, 1161) if _delivered(p)]
    for fmt in ("compact", "extended"):
        record = request_record(names, 1094, 1160, str(tmp_path / f"{fmt}.h5"), output_file_format=fmt)
        write_file(WriteRequest.from_record(record), WriterOptions(data_api_url=url))
        with h5py.File(tmp_path / f"{fmt}.h5", "r") as h5:
            i4 = h5["data/G:I4"]
            assert h5["data/G:IMG/data"].shape == (len(in_range), 512, 512)
            assert (h5["data/G:WAVE/data"].dtype, h5["data/G:IMG/data"].dtype) == (np.float32, np.uint16)
            if fmt == "compact":
                assert h5["data/G:F8/pulse_id"][()].tolist() == in_range
                assert i4["pulse_id"][()].tolist() == [p for p in in_range if p % 3]  # lengths differ
                assert i4["data"][:, 0].tolist() == [-p for p in in_range if p % 3]
                continue
            assert i4["pulse_id"][()].tolist() == in_range  # the union: no pulse of the hole invented
            assert i4["is_data_present"][()].tolist() == [bool(p % 3) for p in in_range]
            dates = [d.decode() for d in i4["global_date"][()]]
            assert [d == "" for d in dates] == [p % 3 == 0 for p in in_range]
            assert i4["data"][:, 0].tolist() == [0 if p % 3 == 0 else -p for p in in_range]
