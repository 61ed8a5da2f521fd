"""The same scenarios through our own client library (hidra_core.client) against the real sender."""
from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pytest

import hidra_core.client
from hidra_core.client import Transfer
from hidra_proc import content, wait_until, write_file
from legacy.emulator import raw_request

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024
ME = socket.getfqdn()


@pytest.fixture
def sender(storage_path):
    pair = storage_path
    pair.start_receiver()
    (pair.base / "local").mkdir()
    proc = pair.start_sender(f"sender.chunksize={CHUNK}", f"sender.local_target.path={pair.base / 'local'}")
    m = re.search(r"com tcp://127.0.0.1:(\d+), request tcp://127.0.0.1:(\d+)", proc.text())
    pair.ports = {"com_port": int(m.group(1)), "request_port": int(m.group(2))}
    return pair


def status(pair) -> dict:
    return json.loads(raw_request(f"tcp://127.0.0.1:{pair.ports['com_port']}", [b"", b"t", b"HIDRA_STATUS", b"[]"])[1])


def write_when_registered(pair, files: dict[str, int], open_requests: int = 0) -> threading.Thread:
    """Write ``files`` once a client is connected (and holds ``open_requests`` NEXTs), from a thread."""
    def run() -> None:
        wait_until(lambda: any(t["connected"] for t in status(pair)["targets"]) and sum(
            r["open_requests"] for r in status(pair)["registrations"]) >= open_requests, 20, "a registered client")
        for rel, size in files.items():
            write_file(pair.source / rel, size)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_stream_iterator_filters_verifies_and_unregisters(sender):
    files = {"a.cbf": 3 * CHUNK + 1, "skip.h5": 100, "sub/b.cbf": 0, "c.cbf": CHUNK}
    writer = write_when_registered(sender, files)
    got = {}
    for meta, data in hidra_core.client.stream("127.0.0.1", pattern=r".*\.cbf$", timeout=20, **sender.ports):
        got[f"{meta['relative_path']}/{meta['filename']}".lstrip("/")] = data
        if len(got) == 3:
            break
    writer.join(5)
    assert got == {rel: content(Path(rel).name, size) for rel, size in files.items() if rel.endswith(".cbf")}
    assert status(sender)["registrations"] == []  # leaving the loop sent STOP


def test_transfer_query_next_gets_whole_files(sender):
    t = Transfer("QUERY_NEXT", signal_host="127.0.0.1", **sender.ports)
    try:
        socket_id = t.start(0)
        t.initiate([[ME, int(socket_id.rpartition(":")[2]), 1]])
        results = []
        for i in range(3):  # one file per NEXT: each is written once get() has asked for it
            writer = write_when_registered(sender, {f"q{i}.dat": 2 * CHUNK + i}, 1)
            meta, data = t.get(timeout=20_000)
            writer.join(5)
            results.append((meta["filename"], data))
        assert sorted(results) == [(f"q{i}.dat", content(f"q{i}.dat", 2 * CHUNK + i)) for i in range(3)]
    finally:
        t.stop()


def test_transfer_metadata_points_at_the_local_copy_and_store_writes_atomically(sender, tmp_path):
    meta_client = Transfer("STREAM_METADATA", signal_host="127.0.0.1", **sender.ports)
    storer = Transfer("STREAM", signal_host="127.0.0.1", **sender.ports)
    (tmp_path / "mine").mkdir()
    try:
        for t in (meta_client, storer):
            port = int(t.start(0).rpartition(":")[2])
            t.initiate([[ME, port, 1]])
        wait_until(lambda: sum(x["connected"] for x in status(sender)["targets"]) == 2, 20, "both connected")
        write_file(sender.source / "run1" / "img.raw", 5 * CHUNK)
        meta, data = meta_client.get(timeout=20_000)
        assert data is None
        assert (Path(meta["source_path"]) / "run1" / "img.raw").read_bytes() == content("img.raw", 5 * CHUNK)
        path = storer.store(str(tmp_path / "mine"), timeout=20_000)
        assert Path(path) == tmp_path / "mine" / "run1" / "img.raw"
        assert Path(path).read_bytes() == content("img.raw", 5 * CHUNK)
    finally:
        meta_client.stop()
        storer.stop()


def test_detector_id_lookup_through_the_control_shim(storage_path):
    """§10 item 19: Transfer(..., detector_id=...) learns the ports from the read-only shim and registers."""
    pair = storage_path
    pair.start_receiver()
    (pair.base / "local").mkdir()
    pair.start_sender(f"sender.local_target.path={pair.base / 'local'}", "sender.clients.detector_id=eiger01",
                      "sender.clients.control_shim=tcp://127.0.0.1:0")
    shim_port = int(re.search(r"control shim tcp://127.0.0.1:(\d+)", pair.sender.text()).group(1))
    t = Transfer("STREAM_METADATA", signal_host="127.0.0.1", detector_id="eiger01", control_server_port=shim_port)
    try:
        port = int(t.start(0).rpartition(":")[2])
        t.initiate([[ME, port, 1]])
        assert t.remote_version.startswith("4.")
        for frames in ([b"exit"], [b"do", b"h", b"eiger01", b"stop"], [b"get", b"h", b"other", b"com_port"]):
            assert raw_request(f"tcp://127.0.0.1:{shim_port}", frames) == [b"ERROR"]
    finally:
        t.stop()
