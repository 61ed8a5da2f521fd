"""hidra4-protocol.md §10 against the real sender, driven by the clean-room 4.x client emulator (tests/legacy).

Items 13-15 and 19 (legacy storage receiver and sender, legacy control shim) are not covered here; 16-18 are
in test_bad_input.py and test_clients.py.
"""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from hidra_proc import content, wait_until, write_file
from legacy.emulator import AuthenticationFailed, CommunicationFailed, LegacyClient, VersionError, raw_request

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024
ME = socket.getfqdn()


@pytest.fixture
def sender(storage_path, request):
    pair = storage_path
    pair.start_receiver()
    (pair.base / "local").mkdir()
    extra = [f"sender.chunksize={CHUNK}", f"sender.local_target.path={pair.base / 'local'}",
             *getattr(request, "param", [])]
    proc = pair.start_sender(*extra)
    m = re.search(r"com tcp://127.0.0.1:(\d+), request tcp://127.0.0.1:(\d+)", proc.text())
    pair.ports = {"com_port": int(m.group(1)), "request_port": int(m.group(2))}
    pair.clients: list[LegacyClient] = []
    try:
        yield pair
    finally:
        for c in pair.clients:
            c.close()


def client(pair, kind: str, **kw) -> LegacyClient:
    c = LegacyClient(kind, "127.0.0.1", **pair.ports, **kw)
    pair.clients.append(c)
    return c


def started(pair, kind: str, pattern: str | None = None, **kw) -> LegacyClient:
    """A client whose data socket is bound (random port) and registered: start first, then initiate."""
    c = client(pair, kind, **kw)
    port = int(c.start(0).rpartition(":")[2])
    c.initiate([[ME, port, 1, *([pattern] if pattern else [])]])
    return c


def com(pair, frames: list[bytes]) -> list[bytes] | None:
    return raw_request(f"tcp://127.0.0.1:{pair.ports['com_port']}", frames)


def status(pair) -> dict:
    return json.loads(com(pair, [b"", b"t", b"HIDRA_STATUS", b"[]"])[1])


def connected(pair, *clients: LegacyClient) -> bool:
    up = {t["id"] for t in status(pair)["targets"] if t["connected"]}
    return all(c.socket_id.lower() in up for c in clients)


def test_1_handshake(sender):
    c = client(sender, "STREAM")
    assert c.get_remote_version().startswith("4.")
    for version in ("3.1.2", "5.0.0"):
        with pytest.raises(VersionError):
            client(sender, "STREAM", version=version).get_remote_version()
    assert client(sender, "STREAM", version="").get_remote_version() == "4.4.3"


@pytest.mark.parametrize("frames", [
    [b"4.4.3", b"1", b"START_STREAM"],
    [b"4.4.3", b"1", b"START_STREAM", b"{not json"],
    [b"4.4.3", b"1", b"START_STREAM", json.dumps([[ME, 1, ".*"]]).encode()],
    [b"4.4.3", b"1", b"START_STREAM", json.dumps([[f"{ME}:6000", 1, "(bad"]]).encode()],
    [b"4.4.3", b"1", b"NO_SUCH_SIGNAL", b"[]"],
])
def test_2_malformed_input_gets_no_valid_signal_and_the_next_request_works(sender, frames):
    assert com(sender, frames) == [b"NO_VALID_SIGNAL"]
    assert com(sender, [b"4.4.3", b"1", b"GET_VERSION", b"[]"]) == [b"GET_VERSION", b"4.4.3"]


def test_3_whitelist_refuses_foreign_targets(sender):
    c = client(sender, "STREAM")
    with pytest.raises(AuthenticationFailed):
        c.initiate([["example.invalid", 6000, 1]])


@pytest.mark.parametrize("sender", [["sender.clients.whitelist=[somewhere.invalid]"]], indirect=True)
def test_3_requester_not_on_the_whitelist_is_refused(sender):
    with pytest.raises(AuthenticationFailed):
        started(sender, "STREAM")


def asked(pair, c: LegacyClient, n: int = 1) -> None:
    """Send NEXT and wait until the sender holds it: files are never kept for a later NEXT (§5.3)."""
    before = open_requests(pair)
    for _ in range(n):
        c._send_request(b"NEXT")
    wait_until(lambda: open_requests(pair) == before + n, 10, "the open request at the sender")


def open_requests(pair) -> int:
    return sum(r["open_requests"] for r in status(pair)["registrations"])


def test_4_query_next_delivers_exactly_one_whole_file_per_next(sender):
    c = started(sender, "QUERY_NEXT")
    write_file(sender.source / "early.dat", 1000)  # no NEXT yet: not delivered to the client
    wait_until(lambda: (sender.target / "early.dat").exists(), 30, "early.dat at storage")
    asked(sender, c)
    size = 3 * CHUNK + 123
    write_file(sender.source / "multi.dat", size)
    meta, data = c.get(timeout=10_000)  # NEXT per chunk, as 4.x does
    assert meta["filename"] == "multi.dat" and data == content("multi.dat", size)
    assert c.get(timeout=300) == [None, None]  # nothing else came: early.dat was never queued
    assert c.sent_requests[-1][0] == b"CANCEL"


def test_4_cancel_clears_open_requests_and_newest_registration_wins(sender):
    c = started(sender, "QUERY_NEXT")
    asked(sender, c, 3)
    c._send_request(b"CANCEL")
    wait_until(lambda: open_requests(sender) == 0, 10, "cancelled")
    other = client(sender, "QUERY_NEXT", appid="other")
    other.initiate([[ME, int(c.socket_id.rpartition(":")[2]), 1]])  # same id, another app: alongside, newer
    assert len(status(sender)["registrations"]) == 2
    c._send_request(b"NEXT")
    wait_until(lambda: [r["appid"] for r in status(sender)["registrations"]] == ["other"], 10, "stale set dropped")


def test_5_stream_round_robin_over_three_workers(sender):
    workers = [client(sender, "STREAM") for _ in range(3)]
    ports = [int(w.start(0).rpartition(":")[2]) for w in workers]
    workers[0].initiate([[ME, p, 1] for p in ports])
    wait_until(lambda: connected(sender, *workers), 10, "three workers connected")
    for i in range(9):
        write_file(sender.source / f"f{i}.dat", 100 + i)
        wait_until(lambda: (sender.target / f"f{i}.dat").exists(), 30, f"f{i}.dat stored")
    order = sorted(workers, key=lambda w: w.socket_id)
    for w_index, w in enumerate(order):
        names = [w.get(timeout=5000)[0]["filename"] for _ in range(3)]
        assert names == [f"f{i}.dat" for i in range(w_index, 9, 3)]
        assert w.get(timeout=200) == [None, None]


def test_5_a_member_whose_pattern_fails_makes_the_set_skip_without_advancing(sender):
    workers = [client(sender, "STREAM"), client(sender, "STREAM")]
    for w in workers:
        w.start(0)
    first, second = sorted(workers, key=lambda w: w.socket_id)  # round-robin follows the sorted ids
    port = lambda w: int(w.socket_id.rpartition(":")[2])  # noqa: E731
    first.initiate([[ME, port(first), 1, r".*\.cbf$"], [ME, port(second), 1, r".*"]])
    wait_until(lambda: connected(sender, first, second), 10, "both connected")
    for name in ("x.h5", "y.cbf"):
        write_file(sender.source / name, 10)
        wait_until(lambda: (sender.target / name).exists(), 30, name)
    assert first.get(timeout=5000)[0]["filename"] == "y.cbf"  # x.h5 skipped the set; then still first's turn
    assert second.get(timeout=200) == [None, None]


def test_6_two_sets_each_get_every_file(sender):
    a = started(sender, "STREAM", appid="app-a")
    b = started(sender, "STREAM", appid="app-b")
    wait_until(lambda: connected(sender, a, b), 10, "both connected")
    for i in range(4):
        write_file(sender.source / f"m{i}.dat", 50)
    for c in (a, b):
        assert sorted(c.get(timeout=5000)[0]["filename"] for _ in range(4)) == [f"m{i}.dat" for i in range(4)]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK, 3 * CHUNK + 1])
def test_7_chunking_edge_cases_close_the_file_in_get_and_store(sender, tmp_path, size):
    getter = started(sender, "STREAM", appid="get")
    storer = started(sender, "STREAM", appid="store")
    wait_until(lambda: connected(sender, getter, storer), 10, "both connected")
    write_file(sender.source / "edge.dat", size)
    meta, data = getter.get(timeout=10_000)
    assert data == content("edge.dat", size)
    assert meta["filesize"] == size and meta["chunk_count"] == max(1, -(-size // CHUNK))
    assert meta["last_chunk"] is True and meta["checksum_algorithm"] == "xxh3_64" and meta["file_checksum"]
    path = storer.store(str(tmp_path / "stored"), timeout=10_000)
    assert Path(path).read_bytes() == content("edge.dat", size)


def test_8_stop_echoes_and_ends_delivery(sender):
    for kind in ("STREAM", "STREAM_METADATA"):
        c = started(sender, kind, appid=f"stop-{kind}")
        wait_until(lambda: connected(sender, c), 10, "connected")
        reply = c.send_signal("STOP_STREAM", c.targets)  # what 4.x stop() sends for both stream types
        assert reply == [b"STOP_STREAM"]
        wait_until(lambda: c.socket_id.lower() not in {t["id"] for t in status(sender)["targets"]}, 10, "closed")
    other = started(sender, "STREAM", appid="mine")
    assert other.send_signal("STOP_STREAM", other.targets) == [b"STOP_STREAM"]
    again = started(sender, "STREAM", appid="owner")
    stranger = client(sender, "STREAM", appid="stranger")
    assert stranger.send_signal("STOP_STREAM", again.targets) == [b"NO_OPEN_CONNECTION_FOUND"]
    write_file(sender.source / "after-stop.dat", 10)
    wait_until(lambda: (sender.target / "after-stop.dat").exists(), 30, "stored")
    assert other.get(timeout=300) == [None, None]


def test_9_force_stop_from_an_admin_host(sender):
    c = started(sender, "STREAM", appid="crashed")
    admin = client(sender, "STREAM", appid="admin")
    assert admin.force_stop([[ME, int(c.socket_id.rpartition(":")[2]), 1]]) == [b"FORCE_STOP_STREAM"]
    assert status(sender)["registrations"] == []


@pytest.mark.parametrize("sender", [["sender.clients.admin_hosts=[admin.invalid]"]], indirect=True)
def test_9_force_stop_from_a_non_admin_host_is_refused(sender):
    c = started(sender, "STREAM", appid="crashed")
    port = int(c.socket_id.rpartition(":")[2])
    assert client(sender, "STREAM", appid="x").force_stop([[ME, port, 1]]) == [b"NO_VALID_HOST"]


def test_10_reregistration_with_subset_or_superset_replaces(sender):
    c = client(sender, "STREAM", appid="re")
    c.initiate([[ME, 7001, 1], [ME, 7002, 1]])
    c.initiate([[ME, 7001, 1]])
    assert [r["members"] for r in status(sender)["registrations"]] == [[f"{ME.lower()}:7001"]]
    c.initiate([[ME, 7001, 1], [ME, 7002, 1], [ME, 7003, 1]])
    assert len(status(sender)["registrations"]) == 1 and len(status(sender)["registrations"][0]["members"]) == 3


def test_11_metadata_modes_point_at_the_durable_local_copy(sender):
    for kind in ("STREAM_METADATA", "QUERY_NEXT_METADATA"):
        c = started(sender, kind, appid=kind)
        if kind.startswith("QUERY"):
            asked(sender, c)
        else:
            wait_until(lambda: connected(sender, c), 10, "connected")
        write_file(sender.source / f"{kind}.dat", 5000)
        meta, data = c.get(timeout=10_000)
        assert data is None and meta["filename"] == f"{kind}.dat"
        local = Path(meta["source_path"]) / meta["relative_path"] / meta["filename"]
        assert local.read_bytes() == content(f"{kind}.dat", 5000)  # it existed when the message was sent


@pytest.mark.parametrize("sender", [["sender.local_target=null"]], indirect=True)
def test_11_metadata_modes_without_local_storing_are_refused(sender):
    for kind in ("STREAM_METADATA", "QUERY_NEXT_METADATA"):
        with pytest.raises(CommunicationFailed):
            started(sender, kind)
        assert sender.clients[-1].replies[-1] == [b"STORING_DISABLED", b"4.4.3"]


def test_12_alive_test_is_ignored_by_client_and_receiver(sender):
    import zmq

    c = started(sender, "STREAM")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = 1000
    try:
        push.connect(f"tcp://127.0.0.1:{c.socket_id.rpartition(':')[2]}")
        push.send(b"ALIVE_TEST")
        data, _conf, _status = sender.receiver.endpoints()
        push2 = ctx.socket(zmq.PUSH)
        push2.linger = 1000
        push2.connect(data)
        push2.send(b"ALIVE_TEST")
        push2.close()
    finally:
        push.close()
        ctx.term()
    wait_until(lambda: connected(sender, c), 10, "connected")
    write_file(sender.source / "alive.dat", 10)
    assert c.get(timeout=10_000)[1] == content("alive.dat", 10)
    wait_until(lambda: (sender.target / "alive.dat").exists(), 30, "stored after ALIVE_TEST")
