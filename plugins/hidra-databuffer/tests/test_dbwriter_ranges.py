"""Long ranges through the real buffer's query API: split into sub-queries (a 413 halves them) and written part
by part, and the binary answer (``rangeformat``) against the spec's JSON; every way must give the same HDF5
content as one JSON query (databuffer.md §8, §9, §12)."""
from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from dbwriter_support import content, request_record
from test_store_query import frame

from hidra_core.testing import wait_until
from hidra_databuffer import rangeformat
from hidra_databuffer.dbwriter import query as dbquery
from hidra_databuffer.dbwriter.layout import LayoutError, RangeWriter
from hidra_databuffer.dbwriter.query import QueryError, SplitLimits
from hidra_databuffer.dbwriter.request import WriteRequest
from hidra_databuffer.dbwriter.service import WriterOptions, write_file
from hidra_databuffer.query_api import QueryLimits, QueryServer, build_app
from hidra_databuffer.store import Store
from hidra_databuffer.store_writer import parse_pulse

START, END = 100, 160
CHANNELS = ["R:F64", "R:STR", "R:BOOL", "R:U64", "R:BE", "R:LZ4", "R:BSLZ4", "R:CHANGE", "R:LATE", "R:NOTHERE"]
ONE_QUERY = SplitLimits(max_pulses=10**6, max_bytes=1 << 40, binary=False)


def _channels(pid: int) -> dict[str, tuple[str, list[int], Any, str, str]]:
    """name -> (type, shape, value or None, encoding, compression) at pulse ``pid``: gaps, None, a type change."""
    chans: dict[str, tuple[str, list[int], Any, str, str]] = {
        "R:F64": ("float64", [1], None if pid % 5 == 0 else pid / 3, "little", "none"),
        "R:BOOL": ("bool", [1], pid % 2 == 0, "little", "none"),
        "R:U64": ("uint64", [1], 2**64 - 1 - pid, "little", "none"),
        "R:BE": ("uint16", [4, 3], np.arange(12) * pid % 65536, "big", "none"),
        "R:LZ4": ("float32", [7], np.arange(7) / (pid + 1), "little", "lz4"),
        "R:BSLZ4": ("int16", [6], -np.arange(6) * pid, "big", "bitshuffle_lz4"),
        "R:CHANGE": ("int32", [3], [pid, -pid, 7], "little", "none") if pid < 130 else
        ("float64", [3], [pid + 0.5, -pid - 0.25, 7.75], "little", "none")}
    if pid % 3 == 0:
        chans["R:STR"] = ("string", [1], f"text {pid} ünïcode", "little", "none")
    if pid >= 140:  # NOTE: a channel the buffer first sees late in the range
        chans["R:LATE"] = ("int8", [2], [pid % 100, -1], "little", "none")
    return chans


def _pulse(pid: int) -> Any:
    payload, entries = b"", []
    for name, (kind, shape, value, encoding, compression) in _channels(pid).items():
        data = b"" if value is None else frame(value, kind, encoding, compression)
        entries.append({"name": name, "type": kind, "shape": shape, "encoding": encoding, "compression": compression,
                        "offset": len(payload), "size": len(data)})
        payload += data
    meta = {"pulse_id": pid, "global_timestamp": [1_700_000_000 + pid // 100, (pid % 100) * 10_000_000 + 17],
            "channels": entries}
    return parse_pulse(meta, payload, {})


class Buffer:
    """A filled store behind two query APIs: one with generous limits, one with a small ``max_query_bytes``."""

    def __init__(self, small_bytes: int) -> None:
        self.store = Store(max_pulses=10**6, max_bytes=1 << 30)
        # NOTE: a hole of pulses the stream never delivered, and pulses delivered every other id for a while
        self.store.append(_pulse(p) for p in range(90, 171) if not 120 <= p < 126 and not (p > 150 and p % 2))
        self.servers = [QueryServer(build_app(self.store, QueryLimits(0, 10**6, limit, False)), "127.0.0.1", 0)
                        for limit in (1 << 30, small_bytes)]
        for server in self.servers:
            server.start()

    def url(self, small: bool = False) -> str:
        return f"{self.servers[small].url}/query"

    def close(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="module")
def buffer() -> Iterator[Buffer]:
    made = Buffer(small_bytes=600)  # NOTE: about five pulses of values: long ranges must be split
    yield made
    made.close()


def _write(url: str, path: Path, split: SplitLimits, start: int = START, end: int = END,
           channels: list[str] | None = None, **params: Any) -> dict[str, Any]:
    record = request_record(channels or CHANNELS, start, end, str(path), **params)
    write_file(WriteRequest.from_record(record), WriterOptions(data_api_url=url, split=split))
    return content(path)


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


LAYOUTS = [{}, {"output_file_format": "extended"}]


@pytest.mark.parametrize("params", LAYOUTS, ids=["compact", "extended"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_long_range_split_into_sub_queries_writes_the_same_file_as_one_query(
        buffer: Buffer, tmp_path: Path, params: dict[str, Any], binary: bool) -> None:
    want = _write(buffer.url(), tmp_path / "one.h5", ONE_QUERY, **params)
    assert want["data/R:F64/data"][1][0] > 20 and "data/R:NOTHERE" not in want  # NOTE: unknown: skipped
    got = _write(buffer.url(), tmp_path / "parts.h5", SplitLimits(max_pulses=7, max_bytes=1, binary=binary),
                 **params)
    _same(got, want)


@pytest.mark.parametrize("params", LAYOUTS, ids=["compact", "extended"])
def test_binary_answer_writes_the_same_file_as_the_json_one(buffer: Buffer, tmp_path: Path,
                                                            params: dict[str, Any]) -> None:
    want = _write(buffer.url(), tmp_path / "json.h5", ONE_QUERY, **params)
    got = _write(buffer.url(), tmp_path / "binary.h5", SplitLimits(10**6, 1 << 40, binary=True), **params)
    _same(got, want)


@pytest.mark.parametrize("params", LAYOUTS, ids=["compact", "extended"])
def test_range_over_max_query_bytes_is_split_on_413_instead_of_failing(buffer: Buffer, tmp_path: Path,
                                                                       params: dict[str, Any]) -> None:
    want = _write(buffer.url(), tmp_path / "one.h5", ONE_QUERY, **params)
    got = _write(buffer.url(small=True), tmp_path / "split.h5", SplitLimits(), **params)
    _same(got, want)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_split_range_keeps_exclusive_bounds_exclusive(buffer: Buffer, tmp_path: Path, binary: bool) -> None:
    record = request_record(["R:BOOL"], 101, 149, str(tmp_path / "x.h5"))
    query = json.loads(record["data_api_request"])
    query["range"].update(startInclusive=False, endInclusive=False)
    record["data_api_request"] = json.dumps(query)
    write_file(WriteRequest.from_record(record),
               WriterOptions(data_api_url=buffer.url(), split=SplitLimits(max_pulses=4, max_bytes=1, binary=binary)))
    pulses = content(tmp_path / "x.h5")["data/R:BOOL/pulse_id"][2]
    assert np.frombuffer(pulses, dtype="i8").tolist() == [p for p in range(102, 149) if not 120 <= p < 126]


def test_a_single_pulse_over_max_query_bytes_is_an_error(tmp_path: Path) -> None:
    small = Buffer(small_bytes=8)
    try:
        with pytest.raises(QueryError, match="single pulse"):
            _write(small.url(small=True), tmp_path / "x.h5", SplitLimits(), channels=["R:BE"])
    finally:
        small.close()
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_shape_change_mid_range_fails_both_ways(buffer: Buffer, tmp_path: Path, binary: bool) -> None:
    buffer.store.append([parse_pulse({"pulse_id": 200, "global_timestamp": [1, 2], "channels": [
        {"name": "R:BE", "type": "uint16", "shape": [5], "offset": 0, "size": 10}]}, bytes(10), {})])
    with pytest.raises(LayoutError, match="R:BE"):
        _write(buffer.url(), tmp_path / "x.h5", SplitLimits(binary=binary), 160, 200, channels=["R:BE"])


def test_query_api_answers_binary_only_when_asked_and_errors_stay_json(buffer: Buffer) -> None:
    body = json.loads(request_record(["R:F64"], START, END, "x")["data_api_request"])
    plain = requests.post(buffer.url(), json=body, timeout=30)
    assert plain.headers["Content-Type"] == "application/json" and isinstance(plain.json(), list)
    binary = requests.post(buffer.url(), json=body, headers={"Accept": rangeformat.ACCEPT}, timeout=30)
    assert binary.headers["Content-Type"] == rangeformat.CONTENT_TYPE
    assert binary.content.startswith(rangeformat.MAGIC)
    other = requests.post(buffer.url(), json=body, headers={"Accept": f"{rangeformat.MEDIA_TYPE}; version=9"},
                          timeout=30)
    assert other.headers["Content-Type"] == "application/json"
    refused = requests.post(buffer.url(small=True), json=body | {"channels": ["R:BE"]},
                            headers={"Accept": rangeformat.ACCEPT}, timeout=30)
    assert refused.status_code == 413 and refused.json()["status"] == 413


def test_truncated_binary_answer_is_an_error_naming_it(buffer: Buffer) -> None:
    body = json.loads(request_record(["R:BE"], START, END, "x")["data_api_request"])
    data = requests.post(buffer.url(), json=body, headers={"Accept": rangeformat.ACCEPT}, timeout=30).content
    pieces = iter([data[:-20]])
    with pytest.raises(rangeformat.FormatError, match="truncated"):
        rangeformat.Reader(lambda n: next(pieces, b"")).answer()


def test_binary_answer_says_its_length_up_front_instead_of_chunking(buffer: Buffer) -> None:
    body = json.loads(request_record(CHANNELS, START, END, "x")["data_api_request"])
    answer = requests.post(buffer.url(), json=body, headers={"Accept": rangeformat.ACCEPT}, timeout=30)
    assert "Transfer-Encoding" not in answer.headers
    assert int(answer.headers["Content-Length"]) == len(answer.content) > 1000


class _CutShort(http.server.BaseHTTPRequestHandler):
    """Answers every query with the real binary answer's headers and Content-Length, but half its body."""

    upstream = ""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        real = requests.post(self.upstream, data=body, headers={"Accept": rangeformat.ACCEPT,
                                                               "Content-Type": "application/json"}, timeout=30)
        self.send_response(200)
        self.send_header("Content-Type", real.headers["Content-Type"])
        self.send_header("Content-Length", str(len(real.content)))
        self.end_headers()
        self.wfile.write(real.content[:len(real.content) // 2])
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


def test_binary_answer_cut_short_of_its_content_length_is_an_error_naming_it(buffer: Buffer,
                                                                               tmp_path: Path) -> None:
    handler = type("Handler", (_CutShort,), {"upstream": buffer.url()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(QueryError, match="truncated after"):
            _write(f"http://127.0.0.1:{server.server_address[1]}/query", tmp_path / "x.h5",
                   SplitLimits(10**6, 1 << 40, binary=True))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert list(tmp_path.iterdir()) == []


def test_next_sub_query_is_fetched_while_a_part_is_being_written(buffer: Buffer, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    real_post, real_add = dbquery._post, RangeWriter.add

    def post(url: str, body: Any, *args: Any) -> Any:
        asked.append(body["range"]["startPulseId"])
        return real_post(url, body, *args)

    def add(self: RangeWriter, part: list[dict[str, Any]]) -> None:
        if not self.points:  # NOTE: the first part: the second is asked for before it is written
            wait_until(lambda: len(asked) >= 2, 10, what="the next sub-query while writing the first part")
        real_add(self, part)

    monkeypatch.setattr(dbquery, "_post", post)
    monkeypatch.setattr(RangeWriter, "add", add)
    got = _write(buffer.url(), tmp_path / "parts.h5", SplitLimits(max_pulses=7, max_bytes=1))
    _same(got, _write(buffer.url(), tmp_path / "one.h5", ONE_QUERY))


def test_sub_query_failing_after_parts_were_written_fails_the_write_and_stops_fetching(tmp_path: Path) -> None:
    small = Buffer(small_bytes=2)  # NOTE: one pulse of R:BOOL fits, one with R:LATE too (from 140) does not
    try:
        with pytest.raises(QueryError, match="single pulse, 140"):
            _write(small.url(small=True), tmp_path / "x.h5", SplitLimits(max_pulses=2, max_bytes=1 << 40),
                   channels=["R:BOOL", "R:LATE"])
    finally:
        small.close()
    assert list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "dbwriter-prefetch"]


def test_payload_buffer_is_reused_only_once_no_value_refers_to_it() -> None:
    buffers = rangeformat.Buffers(keep_bytes=8 << 20)
    first = np.frombuffer(buffers.take(2 << 20), dtype=np.uint8)
    first[:] = 7
    second = np.frombuffer(buffers.take(2 << 20), dtype=np.uint8)
    assert not np.shares_memory(first, second) and (first == 7).all()
    address = first.__array_interface__["data"][0]
    del first
    third = np.frombuffer(buffers.take(2 << 20), dtype=np.uint8)
    assert third.__array_interface__["data"][0] == address
