"""The ``databuffer`` writer end to end: pulse events (metadata + payload as the ``bsread`` source makes them,
/work/db-contract.md) through ``open``/``write``/``close``/``commit_each``, then the query API over real HTTP
(databuffer.md §8, §12, §14 "Buffer and query")."""
from __future__ import annotations

import json
import logging
import re
import struct
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import bitshuffle
import lz4.block
import numpy as np
import pytest
import requests

from hidra_core import PULSE, ProtocolError, WriteTarget, create_driver
from hidra_core.testing import WriterContract, wait_until

NP = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4", "int64": "i8",
      "uint64": "u8", "float32": "f4", "float64": "f8", "bool": "?"}
SEC = 1_700_000_000
IMAGE = (512, 512)


# --- pulses as the bsread source hands them over ------------------------------------------------------------------
def frame(value: Any, kind: str, encoding: str = "little", compression: str = "none") -> bytes:
    """A bsread value frame (databuffer.md §10), made with the lz4 and bitshuffle packages directly."""
    if kind == "string":
        array = np.frombuffer(value.encode(), dtype="u1")
    else:
        array = np.ascontiguousarray(value, dtype=("<" if encoding == "little" else ">") + NP[kind]).ravel()
    raw = array.tobytes()
    if compression == "lz4":
        return struct.pack("<I", len(raw)) + lz4.block.compress(raw, store_size=False)
    if compression == "bitshuffle_lz4":
        block = 2048
        return struct.pack(">qi", len(raw), block * array.itemsize) + bitshuffle.compress_lz4(array, block).tobytes()
    return raw


def make_pulse(pid: int, channels: dict[str, tuple[str, list[int], Any]], *, ns: int = 0, encoding: str = "little",
               compression: str = "none") -> tuple[dict[str, Any], bytes]:
    """(metadata, payload) of one pulse; ``channels``: name -> (type, shape, value or None)."""
    payload, entries = b"", []
    for name, (kind, shape, value) in channels.items():
        data = b"" if value is None else frame(value, kind, encoding, compression)
        entries.append({"name": name, "type": kind, "shape": shape, "encoding": encoding, "compression": compression,
                        "present": value is not None, "timestamp": None if value is None else [SEC + pid, ns],
                        "offset": len(payload), "size": len(data)})
        payload += data
    return {"pulse_id": pid, "global_timestamp": [SEC + pid, ns], "hash": "0" * 32, "channels": entries}, payload


def store(writer: Any, pulses: Sequence[tuple[dict[str, Any], bytes]], root: str = "/unused") -> None:
    """What a receiver does: open, write in pieces, close each pulse, then commit them in one batch."""
    handles = []
    for meta, payload in pulses:
        item = WriteTarget(root, (), f"pulse_{meta['pulse_id']}", {"metadata": meta}, PULSE)
        handle = writer.open(item)
        view = memoryview(payload).toreadonly()
        half = len(payload) // 2
        writer.write(handle, view[:half])
        writer.write(handle, view[half:])
        writer.close(handle)
        handles.append(handle)
    assert writer.commit_each(handles) == [None] * len(handles)


def scalar_pulse(pid: int, **extra: Any) -> tuple[dict[str, Any], bytes]:
    return make_pulse(pid, {"S:A": ("float64", [1], pid * 0.5)}, **extra)


@pytest.fixture
def make_writer(tmp_path: Path) -> Iterator[Any]:
    made = []

    def make(**options: Any) -> Any:
        writer = create_driver("writer", "databuffer", {"http_port": 0, **options}, "<test>", "receiver.databuffer",
                               target=str(tmp_path))
        made.append(writer)
        writer.start()
        return writer

    yield make
    for writer in made:
        writer.shutdown()


@pytest.fixture
def writer(make_writer: Any) -> Any:
    return make_writer(query_wait_s=0)


def query(writer: Any, channels: list[Any], start: int, end: int, **extra: Any) -> requests.Response:
    body = {"channels": [{"name": c, "backend": "sf-databuffer"} if isinstance(c, str) else c for c in channels],
            "range": {"startPulseId": start, "endPulseId": end},
            "response": {"format": "json", "compression": "none"},
            "eventFields": ["channel", "pulseId", "value", "shape", "globalDate"],
            "configFields": ["type", "shape"], **extra}
    return requests.post(writer.url, json=body, timeout=60)


def seconds_of(date: str) -> tuple[int, int]:
    """(sec, ns) of a globalDate, checking its form: nine fractional digits and a UTC offset."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{9})([+-]\d\d:\d\d)", date)
    assert match, f"globalDate {date!r} is not ISO-8601 with nine fractional digits and an offset"
    return int(datetime.fromisoformat(match[1] + match[3]).timestamp()), int(match[2])


# --- the checklist ------------------------------------------------------------------------------------------------
def test_query_returns_exactly_the_delivered_pulses_ascending_with_configs_and_flat_values(writer: Any) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 65535, IMAGE, dtype=np.uint16)
    wave = rng.random(1024, dtype=np.float32)
    delivered = [*range(100, 110), *range(160, 170)]  # a 50-pulse hole between them
    pulses = [make_pulse(pid, {"S:F8": ("float64", [1], pid / 3), "S:I4": ("int32", [1], -pid),
                               "S:STR": ("string", [1], f"pulse {pid} µ"), "S:WAVE": ("float32", [1024], wave + pid),
                               "CAM:FPICTURE": ("uint16", [IMAGE[1], IMAGE[0]], image if pid % 5 == 0 else None)},
                          ns=pid * 1000 + 7)
              for pid in delivered]
    store(writer, pulses[:5])
    store(writer, pulses[5:])
    reply = query(writer, ["S:F8", "S:I4", "S:STR", "S:WAVE", "CAM:FPICTURE"], 90, 200)
    assert reply.status_code == 200, reply.text
    f8, i4, text, wave_entry, camera = reply.json()
    assert [e["channel"] for e in reply.json()] == [{"name": n, "backend": "sf-databuffer"} for n in
                                                     ["S:F8", "S:I4", "S:STR", "S:WAVE", "CAM:FPICTURE"]]
    assert [e["pulseId"] for e in f8["data"]] == delivered
    assert [e["value"] for e in f8["data"]] == [pid / 3 for pid in delivered]
    assert [e["value"] for e in i4["data"]] == [-pid for pid in delivered]
    assert [e["value"] for e in text["data"]] == [f"pulse {pid} µ" for pid in delivered]
    assert (f8["configs"], i4["configs"], text["configs"]) == ([{"type": "float64", "shape": [1]}],
                                                               [{"type": "int32", "shape": [1]}],
                                                               [{"type": "string", "shape": [1]}])
    assert wave_entry["configs"] == [{"type": "float32", "shape": [1024]}]
    assert wave_entry["data"][3]["value"] == (wave + delivered[3]).tolist()
    assert camera["configs"] == [{"type": "uint16", "shape": [512, 512]}]
    assert [e["pulseId"] for e in camera["data"]] == [100, 105, 160, 165]
    assert len(camera["data"][0]["value"]) == 262_144 and camera["data"][0]["value"] == image.ravel().tolist()
    assert camera["data"][0]["shape"] == [512, 512] and f8["data"][0]["shape"] == [1]
    assert [seconds_of(e["globalDate"]) for e in f8["data"]] == [(SEC + pid, pid * 1000 + 7) for pid in delivered]
    assert set(f8["data"][0]) == {"channel", "pulseId", "value", "shape", "globalDate"}


def test_none_values_and_gaps_give_no_event_and_nothing_is_invented(writer: Any) -> None:
    delivered = list(range(0, 40, 4))
    store(writer, [make_pulse(pid, {"A": ("float64", [1], float(pid)),
                                    "B": ("int32", [1], None if pid in (8, 20) else pid)}) for pid in delivered])
    a, b = reply = query(writer, ["A", "B"], 0, 39).json()
    assert [e["pulseId"] for e in a["data"]] == delivered
    assert [e["pulseId"] for e in b["data"]] == [p for p in delivered if p not in (8, 20)]
    assert b["configs"] == [{"type": "int32", "shape": [1]}], reply


def test_unknown_channel_is_an_empty_entry_by_default(writer: Any) -> None:
    store(writer, [scalar_pulse(1)])
    reply = query(writer, ["NOPE", "S:A"], 0, 1)
    assert reply.status_code == 200
    assert reply.json()[0] == {"channel": {"name": "NOPE", "backend": "sf-databuffer"}, "configs": [], "data": []}
    assert [e["pulseId"] for e in reply.json()[1]["data"]] == [1]


def test_unknown_channel_is_404_when_strict(make_writer: Any) -> None:
    writer = make_writer(strict=True, query_wait_s=0)
    store(writer, [scalar_pulse(1)])
    reply = query(writer, ["S:A", "NOPE", "ALSO:NOT"], 0, 1)
    assert reply.status_code == 404
    assert reply.json()["status"] == 404 and reply.json()["unknown_channels"] == ["NOPE", "ALSO:NOT"]


def test_partly_evicted_range_returns_the_retained_pulses_and_names_the_window(make_writer: Any) -> None:
    writer = make_writer(max_pulses=10, query_wait_s=0)
    store(writer, [scalar_pulse(pid) for pid in range(30)])
    reply = query(writer, ["S:A"], 0, 29)
    assert reply.status_code == 200
    assert [e["pulseId"] for e in reply.json()[0]["data"]] == list(range(20, 30))
    assert (reply.headers["X-Databuffer-Oldest"], reply.headers["X-Databuffer-Newest"]) == ("20", "29")
    status = requests.get(writer.url.replace("/query", "/status"), timeout=30).json()
    assert (status["oldest_pulse_id"], status["newest_pulse_id"], status["evictions"]) == (20, 29, 20)


def test_future_range_waits_for_the_pulses_then_answers(make_writer: Any) -> None:
    writer = make_writer(query_wait_s=120)
    store(writer, [scalar_pulse(pid) for pid in range(5)])
    replies: list[requests.Response] = []
    asking = threading.Thread(target=lambda: replies.append(query(writer, ["S:A"], 0, 9)))
    asking.start()
    wait_until(lambda: writer.store.waiting == 1, 30, what="the query to wait for pulse 9")
    store(writer, [scalar_pulse(pid) for pid in range(5, 12)])
    asking.join(60)
    assert [e["pulseId"] for e in replies[0].json()[0]["data"]] == list(range(10))


def test_future_range_answers_with_what_exists_after_query_wait_s(make_writer: Any) -> None:
    writer = make_writer(query_wait_s=0.2)
    store(writer, [scalar_pulse(pid) for pid in range(5)])
    reply = query(writer, ["S:A"], 3, 1000)
    assert reply.status_code == 200 and [e["pulseId"] for e in reply.json()[0]["data"]] == [3, 4]


@pytest.mark.parametrize("body, words", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"channels": ["S:A"]}).encode(), "range"),
    (json.dumps({"channels": ["S:A"], "range": {"startPulseId": 5, "endPulseId": 4}}).encode(), "< range.start"),
    (json.dumps({"channels": ["S:A"], "range": {"startPulseId": "5", "endPulseId": 6}}).encode(), "startPulseId"),
    (json.dumps({"channels": ["S:A"], "range": {"startPulseId": 1, "endPulseId": 2},
                 "response": {"format": "rawevent"}}).encode(), "format"),
    (json.dumps({"channels": ["S:A"], "range": {"startPulseId": 1, "endPulseId": 2},
                 "eventFields": ["value", "iocMillis"]}).encode(), "iocMillis"),
    (json.dumps({"channels": [{"backend": "x"}], "range": {"startPulseId": 1, "endPulseId": 2}}).encode(), "name"),
], ids=["bad-json", "not-an-object", "no-range", "end-before-start", "string-pulse-id", "format", "event-field",
        "channel-without-name"])
def test_bad_request_is_400_with_a_dict_naming_the_problem(writer: Any, body: bytes, words: str) -> None:
    reply = requests.post(writer.url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == 400
    assert reply.json()["status"] == 400 and words in reply.json()["error"], reply.json()


def test_range_over_max_query_pulses_is_413(make_writer: Any) -> None:
    writer = make_writer(max_query_pulses=100, query_wait_s=0)
    store(writer, [scalar_pulse(1)])
    assert query(writer, ["S:A"], 0, 99).status_code == 200
    reply = query(writer, ["S:A"], 0, 100)
    assert reply.status_code == 413 and reply.json()["status"] == 413 and "max_query_pulses" in reply.json()["error"]


def test_values_over_max_query_bytes_is_413(make_writer: Any) -> None:
    writer = make_writer(max_query_bytes=8 * 1024 * 10, query_wait_s=0)
    store(writer, [make_pulse(pid, {"W": ("float64", [1024], np.zeros(1024))}) for pid in range(11)])
    assert query(writer, ["W"], 0, 9).status_code == 200
    reply = query(writer, ["W"], 0, 10)
    assert reply.status_code == 413 and "max_query_bytes" in reply.json()["error"]


def test_request_body_over_a_mib_is_413(writer: Any) -> None:
    body = json.dumps({"channels": ["x" * 100] * 20_000, "range": {"startPulseId": 0, "endPulseId": 1}})
    reply = requests.post(writer.url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == 413 and reply.json()["status"] == 413 and "request body" in reply.json()["error"]


def test_type_and_shape_change_mid_range_lists_both_configs(writer: Any) -> None:
    store(writer, [make_pulse(pid, {"C": ("float64", [1], pid * 1.5)}) for pid in range(5)])
    store(writer, [make_pulse(pid, {"C": ("int16", [3], [pid, -pid, 7])}) for pid in range(5, 10)])
    (entry,) = query(writer, ["C"], 2, 7).json()
    assert entry["configs"] == [{"type": "float64", "shape": [1]}, {"type": "int16", "shape": [3]}]
    assert [(e["pulseId"], e["value"], e["shape"]) for e in entry["data"]] == [
        (2, 3.0, [1]), (3, 4.5, [1]), (4, 6.0, [1]), (5, [5, -5, 7], [3]), (6, [6, -6, 7], [3]), (7, [7, -7, 7], [3])]


@pytest.mark.parametrize("kind, shape, value", [
    ("uint16", [32, 16], np.arange(512, dtype=np.uint16).reshape(16, 32) * 97),
    ("float64", [1], -1234.5678),
    ("int32", [100], np.arange(-50, 50, dtype=np.int32) * 1_000_003),
    ("float32", [7], np.linspace(-1, 1, 7, dtype=np.float32)),
    ("bool", [4], [True, False, False, True]),
    ("string", [1], "Ünïcode text"),
])
def test_big_endian_and_compressed_channels_decode_to_the_same_values(writer: Any, kind: str, shape: list[int],
                                                                      value: Any) -> None:
    variants = [(e, c) for e in ("little", "big") for c in ("none", "lz4", "bitshuffle_lz4")]
    store(writer, [make_pulse(n, {"V": (kind, shape, value)}, encoding=e, compression=c)
                   for n, (e, c) in enumerate(variants)])
    (entry,) = query(writer, ["V"], 0, len(variants) - 1).json()
    assert entry["configs"] == [{"type": kind, "shape": shape}]  # header order (fastest first), never reversed
    values = [e["value"] for e in entry["data"]]
    want = value if isinstance(value, (str, float)) else np.asarray(value).ravel().tolist()
    assert values == [want] * len(variants)


def test_event_and_config_fields_are_honoured(writer: Any) -> None:
    store(writer, [scalar_pulse(4, ns=5)])
    (entry,) = query(writer, ["S:A"], 0, 4, eventFields=["pulseId", "globalSeconds"], configFields=["type"]).json()
    assert entry["configs"] == [{"type": "float64"}]
    assert entry["data"] == [{"pulseId": 4, "globalSeconds": f"{SEC + 4}.000000005"}]
    (bare,) = requests.post(writer.url, json={"channels": ["S:A"], "range": {
        "startPulseId": 3, "endPulseId": 5, "startInclusive": False, "endInclusive": False}}, timeout=30).json()
    assert bare["channel"] == {"name": "S:A", "backend": "sf-databuffer"}
    assert [e["pulseId"] for e in bare["data"]] == [4] and set(bare["data"][0]) == {"pulseId", "globalDate",
                                                                                     "value", "shape"}


def test_channels_status_and_mapping_helpers(writer: Any) -> None:
    store(writer, [make_pulse(pid, {"A": ("float64", [1], 1.0), "B": ("uint8", [2], [1, 2])}) for pid in (3, 5, 6)])
    base = writer.url.removesuffix("/query")
    channels = requests.get(f"{base}/channels", timeout=30).json()
    assert [(c["name"], c["type"], c["shape"]) for c in channels] == [("A", "float64", [1]), ("B", "uint8", [2])]
    status = requests.get(f"{base}/status", timeout=30).json()
    assert (status["pulses"], status["gaps"], status["missing_pulses"], status["channels"]) == (3, 1, 1, 2)
    mapping = requests.post(f"{base}/mapping", json={"range": {"startPulseId": 4, "endPulseId": 10}}, timeout=30)
    assert [(m["pulseId"], m["globalSeconds"]) for m in mapping.json()] == [(5, f"{SEC + 5}.000000000"),
                                                                            (6, f"{SEC + 6}.000000000")]
    assert requests.get(f"{base}/no/such/path", timeout=30).json()["status"] == 404


def test_malformed_pulse_metadata_is_refused_naming_the_problem(writer: Any) -> None:
    meta, payload = scalar_pulse(1)
    for broken, words in [({**meta, "pulse_id": "1"}, "pulse_id"),
                          ({**meta, "global_timestamp": 5}, "global_timestamp"),
                          ({**meta, "channels": [{**meta["channels"][0], "size": 999}]}, "beyond")]:
        handle = writer.open(WriteTarget("/unused", (), "pulse_1", {"metadata": broken}, PULSE))
        writer.write(handle, payload)
        with pytest.raises(ProtocolError, match=words):
            writer.close(handle)
        writer.abort(handle)


def test_channel_whose_value_does_not_fit_its_config_is_left_out_and_logged(writer: Any, caplog: Any) -> None:
    meta, payload = make_pulse(1, {"OK": ("float64", [1], 1.0), "BAD": ("float64", [4], np.zeros(4)),
                                   "ODD": ("int8", [1], 1), "ALSO": ("int8", [1], 2)})
    meta["channels"][1]["shape"] = [5]
    meta["channels"][2]["type"] = ["int8"]
    meta["channels"][3]["compression"] = {"lz4": True}
    with caplog.at_level(logging.ERROR, logger="hidra_databuffer"):
        store(writer, [(meta, payload)])
    assert "BAD" in caplog.text and "holds 32 uncompressed bytes; float64 of shape [5] needs 40" in caplog.text
    assert "type ['int8'] unknown" in caplog.text and "compression {'lz4': True} unknown" in caplog.text
    ok, bad, odd, also = query(writer, ["OK", "BAD", "ODD", "ALSO"], 0, 1).json()
    assert [e["value"] for e in ok["data"]] == [1.0] and bad["data"] == odd["data"] == also["data"] == []


def test_ready_line_names_the_free_port_and_shutdown_stops_the_server(make_writer: Any, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="hidra_databuffer"):
        writer = make_writer()
    port = writer.server.port
    assert port and f"databuffer query API ready: http://127.0.0.1:{port}/query" in caplog.text
    writer.shutdown()
    writer.cleanup(0.0)  # the start-up thread coming late must not start it again
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/status", timeout=5)


def test_value_that_cannot_be_decoded_is_a_500_dict(writer: Any) -> None:
    meta, payload = make_pulse(1, {"Z": ("float64", [4], np.ones(4))}, compression="lz4")
    payload = payload[:4] + b"\xff" * (len(payload) - 4)  # the size header is right, the LZ4 block is garbage
    store(writer, [(meta, payload)])
    reply = query(writer, ["Z"], 0, 1)
    assert reply.status_code == 500 and reply.json()["status"] == 500 and reply.json()["error"]
    assert reply.headers["X-Databuffer-Newest"] == "1"


class TestDatabufferWriterContract(WriterContract):
    driver_name = "databuffer"

    def make_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"http_port": 0}

    _NOT_FILES = "the databuffer writer stores pulse messages in memory and serves them over HTTP, no plain files"

    def test_commit_makes_the_file_visible_and_byte_identical(self, tmp_path: Path) -> None:  # type: ignore[override]
        pytest.skip(self._NOT_FILES)

    def test_several_files_commit_in_one_batch(self, tmp_path: Path) -> None:  # type: ignore[override]
        pytest.skip(self._NOT_FILES)

    def test_abort_leaves_nothing_behind(self, tmp_path: Path) -> None:  # type: ignore[override]
        pytest.skip(f"{self._NOT_FILES}; an aborted pulse is never stored: "
                    "test_malformed_pulse_metadata_is_refused_naming_the_problem")

    def test_cleanup_spares_files_of_the_running_writer(self, tmp_path: Path) -> None:  # type: ignore[override]
        pytest.skip(f"{self._NOT_FILES}; cleanup only starts the query API")
