"""The data buffer's disk tier (databuffer.md §12): what memory no longer holds is served from disk exactly as memory
would serve it, under its own bounds, again after a restart, and never garbage after a crash."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import test_store_query
import zmq
from test_store import F8, ids, pulse
from test_store_query import make_pulse, query, store
from test_store_receiver import TOPIC, Running, _send, running_receiver, wait_confirmed

from hidra_databuffer._decode import value_json
from hidra_databuffer.disk_layout import CHANNEL_SLOT, BadName, decode_name, encode_name
from hidra_databuffer.disk_tier import DiskTier
from hidra_databuffer.store import Event, Pulse, Store

from hidra_core.testing import wait_until

make_writer = test_store_query.make_writer  # NOTE: the fixture, shared
CHANNELS = ["S:F8", "S:I4", "S:STR", "W:F4", "CAM:FPICTURE", "S:NONE", "BE:LZ4", "BS:BSLZ4"]
PICTURE = np.random.default_rng(1).integers(0, 4096, (512, 512), dtype=np.uint16)


def mixed(pid: int) -> list[tuple[dict[str, Any], bytes]]:
    """One pulse of every kind: scalars, a string, a waveform, an image, a None value, big-endian and compressed."""
    plain = make_pulse(pid, {"S:F8": ("float64", [1], pid * 0.25), "S:I4": ("int32", [1], -pid),
                             "S:STR": ("string", [1], f"pulse {pid} ü"),
                             "W:F4": ("float32", [1024], np.linspace(0, pid, 1024, dtype=np.float32)),
                             "CAM:FPICTURE": ("uint16", [512, 512], PICTURE + pid if pid % 3 else None),
                             "S:NONE": ("float64", [1], None)})
    lz4 = make_pulse(pid, {"BE:LZ4": ("int16", [64], np.arange(64, dtype=np.int16) * pid)}, encoding="big",
                     compression="lz4")
    shuffled = make_pulse(pid, {"BS:BSLZ4": ("uint16", [32, 16], np.full((16, 32), pid, dtype=np.uint16))},
                          compression="bitshuffle_lz4")
    meta, payload = plain
    for extra_meta, extra in (lz4, shuffled):
        for channel in extra_meta["channels"]:
            meta["channels"].append({**channel, "offset": channel["offset"] + len(payload)})
        payload += extra
    return [(meta, payload)]


def on_disk(make_writer: Any, path: Path, **options: Any) -> Any:
    """A writer whose memory ring holds one pulse, so all but the newest are served from disk."""
    return make_writer(query_wait_s=0, max_pulses=1, disk={"path": str(path), **options})


def answer(writer: Any, start: int, end: int) -> tuple[Any, Any]:
    reply = query(writer, CHANNELS, start, end)
    base = writer.url.removesuffix("/query")
    mapping = requests.post(f"{base}/mapping", json={"range": {"startPulseId": start, "endPulseId": end}}, timeout=30)
    return reply.json(), mapping.json()


def test_every_type_and_compression_round_trips_through_disk_as_memory_answers(make_writer: Any,
                                                                              tmp_path: Path) -> None:
    memory, disk = make_writer(query_wait_s=0), on_disk(make_writer, tmp_path / "disk")
    for pid in [*range(10, 20), 25, *range(998, 1003)]:  # NOTE: a gap, and a segment boundary
        store(memory, mixed(pid))
        store(disk, mixed(pid))
    assert disk.store.status()["pulses"] == 1  # NOTE: memory holds pulse 1002 only: the rest comes from disk
    assert answer(disk, 0, 2000) == answer(memory, 0, 2000)
    assert answer(disk, 12, 999) == answer(memory, 12, 999)
    data, _ = answer(disk, 0, 2000)
    assert [e["pulseId"] for e in data[4]["data"]] == [10, 11, 13, 14, 16, 17, 19, 25, 998, 1000, 1001]
    assert data[5]["data"] == [] and data[5]["configs"] == [{"type": "float64", "shape": [1]}]


def test_range_evicted_from_memory_is_served_from_disk_and_headers_name_both_tiers(make_writer: Any,
                                                                                  tmp_path: Path) -> None:
    writer = on_disk(make_writer, tmp_path / "disk")
    store(writer, [make_pulse(pid, {"S:A": ("float64", [1], pid * 0.5)}) for pid in range(100, 110)])
    reply = query(writer, ["S:A"], 100, 105)
    assert [(e["pulseId"], e["value"]) for e in reply.json()[0]["data"]] == [(p, p * 0.5) for p in range(100, 106)]
    assert (reply.headers["X-Databuffer-Oldest"], reply.headers["X-Databuffer-Newest"]) == ("100", "109")
    status = requests.get(writer.url.removesuffix("/query") + "/status", timeout=30).json()
    assert (status["oldest_pulse_id"], status["disk"]["oldest_pulse_id"], status["disk"]["pulses"]) == (109, 100, 10)


def test_config_change_mid_range_lists_both_configs_from_disk(make_writer: Any, tmp_path: Path) -> None:
    writer = on_disk(make_writer, tmp_path / "disk")
    store(writer, [make_pulse(pid, {"C": ("float64", [1], pid * 1.5)}) for pid in range(5)])
    store(writer, [make_pulse(pid, {"C": ("int16", [3], [pid, -pid, 7])}) for pid in range(5, 10)])
    (entry,) = query(writer, ["C"], 2, 7).json()
    assert entry["configs"] == [{"type": "float64", "shape": [1]}, {"type": "int16", "shape": [3]}]
    assert [(e["pulseId"], e["value"]) for e in entry["data"]] == [
        (2, 3.0), (3, 4.5), (4, 6.0), (5, [5, -5, 7]), (6, [6, -6, 7]), (7, [7, -7, 7])]
    channels = requests.get(writer.url.removesuffix("/query") + "/channels", timeout=30).json()
    assert [(h["pulseId"], h["type"]) for h in channels[0]["history"]] == [(0, "float64"), (5, "int16")]


def disk_store(path: Path, **bounds: Any) -> Store:
    tier = DiskTier(path, **{"max_pulses": 10**9, "max_bytes": 1 << 40, **bounds})
    return Store(max_pulses=1, max_bytes=1 << 30, disk=tier)


def test_disk_bounds_evict_whole_segments_oldest_first_and_count_them(tmp_path: Path) -> None:
    by_pulses = disk_store(tmp_path / "p", max_pulses=2500)
    for first in range(0, 5000, 100):
        by_pulses.append(pulse(n, a=float(n)) for n in range(first, first + 100))
    assert ids(by_pulses) == list(range(3000, 5000))
    disk = by_pulses.status()["disk"]
    assert (disk["oldest_pulse_id"], disk["pulses"], disk["evictions_by_bound"]["pulses"]) == (3000, 2000, 3000)
    assert not list((tmp_path / "p").glob("**/0.*")) and list((tmp_path / "p").glob("**/3.seg"))
    by_bytes = disk_store(tmp_path / "b", max_bytes=1500 * 8)
    by_bytes.append(pulse(n, a=float(n)) for n in range(3500))
    assert ids(by_bytes)[0] == 2000 and by_bytes.status()["disk"]["evictions_by_bound"]["bytes"] == 2000
    folders = disk_store(tmp_path / "f", max_pulses=1000)
    folders.append([pulse(99_999, a=1.0), *(pulse(n, a=1.0) for n in range(100_000, 101_000))])
    assert ids(folders)[0] == 100_000 and not list((tmp_path / "f").glob("*/**/0"))  # NOTE: no empty folder left
    now = [1000.0]
    tier = DiskTier(tmp_path / "a", 10**9, 1 << 40, max_age_s=60, clock=lambda: now[0])
    by_age = Store(max_pulses=1, max_bytes=1 << 30, disk=tier)
    by_age.append(pulse(n, a=1.0) for n in range(1000))
    now[0] = 1100.0
    by_age.append([pulse(1000, a=1.0)])
    assert ids(by_age) == [1000] and tier.evictions["age"] == 1000


def test_only_channels_matching_the_disk_patterns_go_to_disk(tmp_path: Path) -> None:
    store = disk_store(tmp_path, channels=["*:FPICTURE", "KEEP"])
    store.append(pulse(n, **{"CAM:FPICTURE": float(n), "KEEP": 1.0, "S:A": 2.0}) for n in range(5))
    assert ids(store, "CAM:FPICTURE") == ids(store, "KEEP") == [0, 1, 2, 3, 4] and ids(store, "S:A") == [4]
    assert sorted(os.listdir(tmp_path / "channels")) == ["CAM%3AFPICTURE", "KEEP"]
    assert store.mapping(0, 10) == [(n, 1_700_000_000 + n, 123) for n in range(5)]


def test_readers_during_appends_see_each_committed_pulse_once_from_one_tier(tmp_path: Path) -> None:
    store = disk_store(tmp_path, max_pulses=3000)
    store.max_pulses = 7  # NOTE: a small memory ring: the tier boundary moves with every batch
    seen: list[list[tuple[int, float]]] = []
    failed: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                (selection,) = store.select(["a"], 0, 10**6)
                seen.append([(p.pulse_id, value_json(ev.config, p.blob, ev.offset, ev.size))
                             for p, ev in selection.hits])
        except BaseException as exc:  # NOTE: a reader's failure fails the test, not just a thread
            failed.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for first in range(0, 1200, 10):
            before = len(seen)
            store.append(pulse(n, a=n * 0.5) for n in range(first, first + 10))
            # NOTE: the reader keeps reading through the next append too: answers of every length, some mid-append
            wait_until(lambda at=before: len(seen) > at + 1 or failed, 30, what="a reader's answers", interval_s=0.001)
            assert not failed, failed
    finally:
        done.set()
        reader.join(60)
    assert not failed, failed
    (last,) = store.select(["a"], 0, 10**6)
    seen.append([(p.pulse_id, value_json(ev.config, p.blob, ev.offset, ev.size)) for p, ev in last.hits])
    assert seen[-1] == [(n, n * 0.5) for n in range(1200)]
    for answer in seen:  # NOTE: every answer a prefix of the stream: nothing twice, nothing torn, no hole
        assert answer == [(n, n * 0.5) for n in range(len(answer))]
    assert len(seen) > 240


def test_a_channel_new_on_disk_is_not_served_before_its_first_config_line(tmp_path: Path) -> None:
    store = disk_store(tmp_path)
    assert store.disk is not None
    store.disk._channel("a")  # NOTE: the appending thread between a new channel's directory and its config line
    (selection,) = store.select(["a"], 0, 10)
    assert (selection.known, selection.hits, store.channels(), store.mapping(0, 10)) == (False, [], {}, [])


def test_new_store_on_the_same_path_serves_the_old_pulses(make_writer: Any, tmp_path: Path) -> None:
    first = on_disk(make_writer, tmp_path / "disk")
    for pid in range(10, 16):
        store(first, mixed(pid))
    before = answer(first, 0, 100)
    first.shutdown()
    again = on_disk(make_writer, tmp_path / "disk")
    assert answer(again, 0, 100) == before
    status = requests.get(again.url.removesuffix("/query") + "/status", timeout=30).json()
    assert (status["pulses"], status["disk"]["oldest_pulse_id"], status["disk"]["newest_pulse_id"]) == (0, 10, 15)
    store(again, mixed(16))
    assert [e["pulseId"] for e in query(again, ["S:F8"], 0, 100).json()[0]["data"]] == list(range(10, 17))


def test_torn_writes_are_absent_after_reload_and_never_garbage(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10**9, 1 << 40)
    Store(1, 1 << 30, disk=tier).append(pulse(n, a=float(n), b=-float(n)) for n in range(5))
    tier.close()
    seg = tmp_path / "channels" / encode_name("a") / "0" / "0.seg"
    os.truncate(seg, 4 * 8 + 3)  # NOTE: pulse 4's frame of a torn in half
    index = tmp_path / "channels" / encode_name("b") / "0" / "0.idx"
    with open(index, "r+b") as file:  # NOTE: pulse 2's slot of b torn
        file.seek(2 * CHANNEL_SLOT.size + 5)
        file.write(b"\xff\xff")
    with open(tmp_path / "channels" / encode_name("a") / "configs.jsonl", "ab") as file:
        file.write(b'{"first_pulse_id": 9, "ty')
    again = Store(1, 1 << 30, disk=DiskTier(tmp_path, 10**9, 1 << 40))
    assert ids(again, "a") == [0, 1, 2, 3] and ids(again, "b") == [0, 1, 3, 4]
    hits = again.select(["a", "b"], 0, 10)
    assert [value_json(ev.config, p.blob, ev.offset, ev.size) for p, ev in hits[0].hits] == [0.0, 1.0, 2.0, 3.0]
    assert [value_json(ev.config, p.blob, ev.offset, ev.size) for p, ev in hits[1].hits] == [-0.0, -1.0, -3.0, -4.0]
    again.append([pulse(5, a=5.0)])  # NOTE: the torn config line was cut off, so new lines number right
    assert ids(reload(tmp_path), "a") == [0, 1, 2, 3, 5]


def reload(path: Path) -> Store:
    return Store(1, 1 << 30, disk=DiskTier(path, 10**9, 1 << 40))


_WRITER = textwrap.dedent("""
    import struct, sys
    import numpy as np
    from hidra_databuffer._decode import ChannelConfig
    from hidra_databuffer.disk_tier import DiskTier
    from hidra_databuffer.store import Event, Pulse, Store
    F8, IMG = ChannelConfig("float64", (1,), "little", "none"), ChannelConfig("uint16", (256, 256), "little", "none")
    store = Store(1, 1 << 30, disk=DiskTier(sys.argv[1], 10**9, 1 << 40))
    pid = 0
    while True:
        image = np.full(256 * 256, pid % 65536, dtype="<u2").tobytes()
        blob = struct.pack("<d", pid * 0.5) + image
        store.append([Pulse(pid, 1_700_000_000 + pid, 7, blob, {"S": Event(F8, 0, 8), "I": Event(IMG, 8, len(image))})])
        print(pid, flush=True)
        pid += 1
""")


def test_writer_killed_mid_append_leaves_complete_pulses_served_and_no_garbage(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        out = proc.stdout
        assert out is not None
        wait_until(lambda: int(out.readline() or -1) >= 300, 60, what="300 pulses written", interval_s=0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        rest = out.read().split()
        committed = int(rest[-1]) if rest else 300  # NOTE: the last pulse reported as appended
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    scalars, images = reload(tmp_path).select(["S", "I"], 0, 10**6)
    served = [p.pulse_id for p, _ in scalars.hits]
    assert served == list(range(len(served))) and len(served) - 1 in (committed, committed + 1)
    assert [p.pulse_id for p, _ in images.hits] == served
    assert [value_json(ev.config, p.blob, ev.offset, ev.size) for p, ev in scalars.hits] == [n * 0.5 for n in served]
    for p, ev in images.hits[-3:]:
        assert set(np.frombuffer(p.blob, "<u2", ev.size // 2, ev.offset).tolist()) == {p.pulse_id % 65536}


@pytest.mark.parametrize("name", ["..", ".", "a/../../x", "/etc/passwd", "X:Y/Z", "%2E%2E", "\0nul", "Ünïcode",
                                  "x" * 80, "~", "-"])
def test_hostile_channel_names_round_trip_and_stay_inside_the_root(tmp_path: Path, name: str) -> None:
    encoded = encode_name(name)
    assert decode_name(encoded) == name and "/" not in encoded and encoded not in (".", "..")
    root = tmp_path / "root"
    tier = DiskTier(root, 10**9, 1 << 40)
    Store(1, 1 << 30, disk=tier).append([Pulse(n, 1, 2, struct.pack("<d", n), {name: Event(F8, 0, 8)})
                                         for n in range(3)])
    tier.close()
    inside = [p.resolve() for p in tmp_path.rglob("*")]
    assert all(p.is_relative_to(root.resolve()) for p in inside)
    assert (root / "channels" / encoded / "configs.jsonl").exists()
    assert ids(reload(root), name) == [0, 1, 2]


@pytest.mark.parametrize("name", ["\udc80bad", "", "é" * 200, "%zz"])
def test_names_that_cannot_be_directories_are_refused_and_kept_in_memory(tmp_path: Path, name: str) -> None:
    if name == "%zz":
        with pytest.raises(BadName):
            decode_name(name)
        return
    with pytest.raises(BadName):
        encode_name(name)
    store = disk_store(tmp_path)
    store.append([Pulse(n, 1, 2, struct.pack("<d", n), {name: Event(F8, 0, 8), "ok": Event(F8, 0, 8)})
                  for n in range(3)])
    assert ids(store, "ok", 0, 5) == [0, 1, 2] and ids(store, name) == [2]
    assert os.listdir(tmp_path / "channels") == ["ok"]


def _deliver(receiver: Running, pids: list[int]) -> None:
    """Send ``mixed`` pulses to a receiver process and wait for every confirmation."""
    ctx = zmq.Context()
    push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    try:
        for s in (push, sub):
            s.linger = 0
        sub.subscribe(TOPIC)
        sub.connect(receiver.confirmations)
        push.connect(receiver.data)
        for pid in pids:
            ((meta, payload),) = mixed(pid)
            _send(push, meta, payload, chunksize=300_000)
        wait_confirmed(sub, pids)
    finally:
        push.close()
        sub.close()
        ctx.term()


@pytest.mark.integration
def test_receiver_process_killed_and_started_again_on_the_same_disk_path_serves_the_old_pulses(
        make_writer: Any, tmp_path: Path) -> None:
    sets = [f"receiver.databuffer.disk.path={tmp_path / 'disk'}", "receiver.databuffer.max_pulses=2"]
    pids = [*range(40, 50), 60, 61]
    with running_receiver(tmp_path, *sets) as first:
        _deliver(first, pids)
        before = query(first, CHANNELS, 0, 100)
        assert [e["pulseId"] for e in before.json()[0]["data"]] == pids
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    memory = make_writer(query_wait_s=0)
    for pid in pids:
        store(memory, mixed(pid))
    with running_receiver(tmp_path, *sets) as again:
        after = query(again, CHANNELS, 0, 100)
        assert after.json() == before.json() == query(memory, CHANNELS, 0, 100).json()
        assert after.headers["X-Databuffer-Oldest"] == "40"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_ranges_written_from_the_disk_tier_equal_those_written_from_memory(tmp_path: Path, binary: bool) -> None:
    """The writer's split and binary queries read disk-tier hits (mmap'd segments) exactly as memory ones."""
    from dbwriter_support import content, request_record
    from test_dbwriter_ranges import CHANNELS as RANGE_CHANNELS
    from test_dbwriter_ranges import END, START, _pulse

    from hidra_databuffer.dbwriter.query import SplitLimits
    from hidra_databuffer.dbwriter.request import WriteRequest
    from hidra_databuffer.dbwriter.service import WriterOptions, write_file
    from hidra_databuffer.query_api import QueryLimits, QueryServer, build_app

    pids = [p for p in range(90, 171) if not 120 <= p < 126]
    memory = Store(max_pulses=10**6, max_bytes=1 << 30)
    disk = Store(max_pulses=1, max_bytes=1 << 30, disk=DiskTier(tmp_path / "tier", 10**9, 1 << 40))
    files = {}
    for name, store_ in (("memory", memory), ("disk", disk)):
        store_.append(_pulse(p) for p in pids)
        server = QueryServer(build_app(store_, QueryLimits(0, 10**6, 1 << 30, False)), "127.0.0.1", 0)
        server.start()
        try:
            record = request_record(RANGE_CHANNELS, START, END, str(tmp_path / f"{name}.h5"))
            options = WriterOptions(data_api_url=f"{server.url}/query",
                                    split=SplitLimits(max_pulses=7, max_bytes=1, binary=binary))
            write_file(WriteRequest.from_record(record), options)
        finally:
            server.stop()
        files[name] = content(tmp_path / f"{name}.h5")
    assert disk.status()["disk"]["pulses"] == len(pids)  # NOTE: memory kept one pulse: the rest came from disk
    assert files["disk"] == files["memory"]
