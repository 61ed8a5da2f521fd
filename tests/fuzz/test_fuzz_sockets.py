"""The socket fuzzer against every bound socket of running ``hidra`` processes (a receiver, an inotify sender with
its com, request and control-shim ports, a ``zmq_ingest`` sender): 10,000 malformed messages per socket, then every
process is still up and serving (a real file goes through intact), REP sockets answered every request with an
error, memory came back within ``RSS_BOUND_KIB`` and nothing was written outside the dirs each process owns.

RSS bound: each barrage carries about 275 MiB (a fifth of the messages bring a 64 KiB frame, one in 200 a frame
of up to 4 MiB), so a process that kept what it was sent would grow past 200 MiB; what it may legitimately keep
is malloc arenas holding freed frames, ZeroMQ buffers and caches of the host names in com requests: measured 0-11
MiB per barrage (before the request port had a message size limit, 60-125 MiB stayed after its 10,000-message
queue had been full). Memory is read until it settles (deadline 30 s): what is only still queued is not kept.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from hidra_core import Ingest, ingest
from hidra_core.errors import ProtocolError
from hidra_core.protocol import encode_metadata
from integration.hidra_proc import Hidra, content, intact, receiver_overrides, sender_overrides, wait_until
from socket_fuzzer import Mutator, RawPeer, files_outside, memory_kib, push, request

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = int(os.environ.get("HIDRA_FUZZ_MESSAGES", "10000"))
RSS_BOUND_KIB = 200 * 1024
CLIENTS = re.compile(r"com (\S+), request (\S+), control shim (\S+),")


class Rig:
    """A receiver, an inotify sender and an ingest sender on loopback; the target three levels below ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.target = base / "store" / "deep" / "target"
        self.source, self.state, self.ingest_state = base / "source", base / "state", base / "ingest-state"
        for d in (self.target, self.source, self.state, self.ingest_state):
            d.mkdir(parents=True)
        self.procs: list[Hidra] = []
        self.receiver = self._start("receiver", receiver_overrides(self.target))
        self.data, confirmations, self.status = self.receiver.endpoints()
        self.sender = self._start("sender", [*sender_overrides(self.source, self.state, self.data, confirmations),
                                             "sender.clients.control_shim=tcp://127.0.0.1:0"])
        found = CLIENTS.search(self.sender.text())
        assert found, self.sender.text()
        self.com, self.request, self.shim = found.groups()
        self.ingest_sender = self._start("sender", [
            "sender.source.type=zmq_ingest", "sender.source.zmq_ingest.endpoint=tcp://127.0.0.1:0",
            f"sender.storage.data={self.data}", f"sender.storage.confirmations={confirmations}",
            f"sender.ledger.path={self.ingest_state / 'ledger.sqlite'}", "sender.clients.com=tcp://127.0.0.1:0",
            "sender.clients.request=tcp://127.0.0.1:0"], log="ingest-sender.log")
        found = re.search(r"zmq_ingest: listening on (\S+)", self.ingest_sender.text())
        assert found, self.ingest_sender.text()
        self.ingest = found.group(1)
        self.context = zmq.Context()
        self.checked = 0

    def _start(self, role: str, overrides: list[str], log: str = "") -> Hidra:
        proc = Hidra(role, self.base / (log or f"{role}.log"), overrides)
        self.procs.append(proc)
        proc.wait_ready()
        return proc

    def allowed(self) -> list[Path]:
        return [self.target, self.source, self.state, self.ingest_state, *(p.log for p in self.procs)]

    def serves(self) -> None:
        """Every process is up, and a real file goes through each sender to the target intact."""
        for proc in self.procs:
            assert proc.proc.poll() is None, f"{proc.role} died:\n{proc.text()[-3000:]}"
        self.checked += 1
        name = f"check/inotify-{self.checked}.bin"
        path = self.source / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content(path.name, 100_000))
        producer = Ingest(self.ingest, producer="fuzz-check", timeout_s=30, context=self.context)
        ingested = f"check/ingest-{self.checked}.bin"
        try:
            producer.send_file(ingested, content(Path(ingested).name, 50_000), wait=True)
        finally:
            producer.close()
        wait_until(lambda: intact(self.target, name, 100_000) and intact(self.target, ingested, 50_000), 60,
                   "a real file through each sender after the barrage")
        reply = request(self.context, self.status, [[b"STATUS_CHECK"]])
        assert reply[0][1][0] in (b"OK", b"ERROR")
        reply = request(self.context, self.com, [[b"4.4.3", b"1", b"GET_VERSION", b"[]"]])
        assert reply[0][1][0] == b"GET_VERSION"

    def close(self) -> None:
        self.context.destroy(linger=0)
        for proc in self.procs:
            proc.kill()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    made = Rig(tmp_path_factory.mktemp("fuzz"))
    try:
        made.serves()  # NOTE: warm: every code path a file takes has run once before memory is measured
        yield made
    finally:
        made.close()


def _data_templates() -> list[list[bytes]]:
    base: dict[str, Any] = {"htype": "hidra-file-1.0", "filename": "a.bin", "relative_path": "fuzz",
                            "source_path": "/src", "filesize": 20, "file_mod_time": 1.5, "file_create_time": 1.5,
                            "chunksize": 10, "chunk_count": 2, "checksum_algorithm": "xxh3_64",
                            "confirmation_required": "fuzz-topic"}
    first = {**base, "chunk_number": 0, "last_chunk": False}
    last = {**base, "chunk_number": 1, "last_chunk": True, "file_checksum": "00"}
    legacy = {"filename": "b.bin", "relative_path": "fuzz/legacy", "filesize": 5, "chunksize": 10, "chunk_number": 0}
    frame = {**base, "htype": "hidra-frame-1.0", "series": "s1", "filename": "f_000001.cbf", "filesize": 10,
             "chunk_count": 1, "chunk_number": 0, "last_chunk": True}
    return [[encode_metadata(m), b"0123456789"] for m in (first, last, frame)] + [[encode_metadata(legacy), b"12345"]]


def _check_barrage(rig: Rig, proc: Hidra, send: Any) -> Any:
    before_files = files_outside(rig.base, rig.allowed())
    before = memory_kib(proc.proc.pid)
    result = send()
    rig.serves()
    peak = memory_kib(proc.proc.pid)
    # NOTE: what is still queued in ZeroMQ or freed but not yet trimmed comes back a moment later; a leak does not
    wait_until(lambda: memory_kib(proc.proc.pid) - before < RSS_BOUND_KIB, 30,
               f"the {proc.role}'s memory to come back within {RSS_BOUND_KIB} KiB of the {before} KiB before the"
               f" barrage (it was {peak} KiB after it)")
    print(f"RSS of the {proc.role}: {before} KiB before, {peak} after, {memory_kib(proc.proc.pid)} KiB settled")
    assert files_outside(rig.base, rig.allowed()) == before_files == set()
    return result


def test_receiver_data_socket_survives_malformed_messages(rig):
    mutator = Mutator(_data_templates())
    # NOTE: one connection is read in order: once the last file is stored, every message before it was handled
    last = [encode_metadata({"filename": "last.bin", "relative_path": "fuzz-done", "filesize": 3, "chunksize": 10,
                             "chunk_number": 0}), b"end"]
    sent = _check_barrage(rig, rig.receiver, lambda: push(
        rig.context, rig.data, zmq.PUSH, [*mutator.messages(MESSAGES), last],
        until=lambda: (rig.target / "fuzz-done" / "last.bin").exists()))
    assert sent == MESSAGES + 1
    assert "malformed message dropped" in rig.receiver.text()


def test_receiver_status_socket_answers_every_malformed_request_with_an_error(rig):
    mutator = Mutator([[b"STATUS_CHECK"], [b"RESET_STATUS"]])
    replies = _check_barrage(rig, rig.receiver, lambda: request(rig.context, rig.status, mutator.messages(MESSAGES)))
    assert len(replies) > MESSAGES * 0.9
    for asked, reply in replies:
        if asked not in ([b"STATUS_CHECK"], [b"RESET_STATUS"]):
            assert reply == [b"ERROR"], (asked[:3], reply)


def test_receiver_confirmation_socket_survives_hostile_subscriptions(rig):
    def subscribe() -> None:
        sub = rig.context.socket(zmq.SUB)
        sub.linger = 0
        sub.connect(rig.receiver.endpoints()[1])
        for msg in Mutator([[b"fuzz-topic"]]).messages(MESSAGES):
            # NOTE: topics of at most 64 KiB: libzmq's own SUB trie (in this test process) overflows its stack
            # removing a topic of about 1 MiB; the receiver's PUB side survives those (checked by hand)
            topic = msg[-1][:65536]
            sub.subscribe(topic)
            if len(msg) % 2:
                sub.unsubscribe(topic)
        sub.close()

    _check_barrage(rig, rig.receiver, subscribe)


def test_receiver_does_not_keep_huge_subscriptions_to_its_confirmations(rig):
    """libzmq keeps about 24 bytes per subscribed byte: 300 subscriptions of 64 KiB used to add 450 MiB."""
    def subscribe() -> None:
        peer = RawPeer(rig.receiver.endpoints()[1], b"SUB")
        try:
            for _ in range(300):
                if not peer.send([b"\x01" + os.urandom(65536)]):
                    break  # the receiver dropped this subscriber: what the fix does
        finally:
            peer.close()

    _check_barrage(rig, rig.receiver, subscribe)


@pytest.mark.parametrize("socket_name, socket_type, message", [
    ("request", b"PUSH", [b"NEXT", b"localhost:" + b"1" * 100_000]),
    ("confirmations", b"SUB", [b"\x01" + b"t" * 100_000]),
])
def test_oversized_message_to_a_control_socket_drops_the_connection(rig, socket_name, socket_type, message):
    endpoint = rig.request if socket_name == "request" else rig.receiver.endpoints()[1]
    peer = RawPeer(endpoint, socket_type)
    try:
        peer.sock.settimeout(10)
        assert peer.send(message)
        assert peer.closed_by_peer(), f"the {socket_name} socket kept a peer that sent {len(message[-1])} bytes"
    finally:
        peer.close()
    rig.serves()


SIGNAL_REPLIES = {b"NO_VALID_SIGNAL", b"VERSION_CONFLICT", b"NO_VALID_HOST", b"NO_OPEN_CONNECTION_FOUND",
                  b"STORING_DISABLED", b"GET_VERSION", b"HIDRA_STATUS", b"START_STREAM", b"START_STREAM_METADATA",
                  b"START_QUERY_NEXT", b"START_QUERY_NEXT_METADATA", b"STOP_STREAM", b"STOP_STREAM_METADATA",
                  b"STOP_QUERY_NEXT", b"STOP_QUERY_NEXT_METADATA"}


def test_sender_com_socket_answers_every_malformed_signal(rig):
    targets = json.dumps([["localhost:50123", 1, [".cbf"]]]).encode()
    templates = [[b"4.4.3", b"7", signal, targets] for signal in (b"START_STREAM", b"STOP_STREAM", b"GET_VERSION",
                                                                  b"START_QUERY_NEXT", b"HIDRA_STATUS")]
    replies = _check_barrage(rig, rig.sender, lambda: request(rig.context, rig.com,
                                                              Mutator(templates).messages(MESSAGES)))
    assert len(replies) > MESSAGES * 0.9
    for asked, reply in replies:
        assert reply and reply[0] in SIGNAL_REPLIES, (asked[:3], reply)
        if len(asked) != 4:
            assert reply == [b"NO_VALID_SIGNAL"], (asked[:3], reply)


def test_sender_request_socket_survives_malformed_requests(rig):
    templates = [[b"NEXT", b"localhost:50123"], [b"CANCEL", b"localhost:50123"]]
    sent = _check_barrage(rig, rig.sender, lambda: push(rig.context, rig.request, zmq.PUSH,
                                                        Mutator(templates, big=False).messages(MESSAGES)))
    assert sent == MESSAGES


def test_sender_control_shim_answers_every_malformed_request_with_an_error(rig):
    templates = [[b"IS_ALIVE"], [b"get", b"x", b"det", b"com_port"], [b"do", b"x", b"det", b"get_instances"]]
    replies = _check_barrage(rig, rig.sender, lambda: request(rig.context, rig.shim,
                                                              Mutator(templates).messages(MESSAGES)))
    assert len(replies) > MESSAGES * 0.9
    for asked, reply in replies:
        valid = asked == [b"IS_ALIVE"] or len(asked) == 4 and (asked[0], asked[3]) in (
            (b"get", b"com_port"), (b"get", b"request_port"), (b"do", b"get_instances"))
        if not valid:  # NOTE: any detector id is served (sender.clients.detector_id is not set here)
            assert reply == [b"ERROR"], (asked[:4], reply)


def _undecodable(msg: list[bytes]) -> bool:
    try:
        ingest.decode(msg)
    except ProtocolError:
        return True
    return False


def test_ingest_socket_answers_every_malformed_message_with_an_error(rig):
    templates = [[ingest.encode(ingest.CREATE, file=1, name="fuzz/i.bin", producer="fuzz")],
                 [ingest.encode(ingest.WRITE, file=1, offset=0), b"0123456789"],
                 [ingest.encode(ingest.CLOSE, file=1, size=10)],
                 [ingest.encode(ingest.FILE, file=2, name="fuzz/j.bin", producer="fuzz"), b"abc"]]
    messages = list(Mutator(templates).messages(MESSAGES))
    errors: list[dict[str, Any]] = []

    def reply(frames: list[bytes]) -> None:
        msg = ingest.decode(frames)
        if msg.op == ingest.ERROR:
            errors.append(msg.fields)

    def barrage() -> None:
        # NOTE: a producer's messages are handled in order: the error for the last one comes after all others
        last = [ingest.encode("last-of-the-barrage")]
        sent = push(rig.context, rig.ingest, zmq.DEALER, [*messages, last], reply,
                    until=lambda: bool(errors) and "last-of-the-barrage" in errors[-1]["error"])
        assert sent == MESSAGES + 1

    _check_barrage(rig, rig.ingest_sender, barrage)
    assert errors and all(isinstance(e["error"], str) and e["error"] for e in errors)
    # NOTE: the source decodes with the same codec: exactly the messages it cannot decode get "malformed" back
    malformed = sum(_undecodable(m) for m in messages) + 1
    assert len([e for e in errors if e["error"].startswith("malformed message")]) == malformed


GIB = 1 << 30


@pytest.fixture(scope="module")
def gigabyte() -> bytes:
    if os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") < 6 * GIB:
        pytest.skip("a 1 GiB frame needs about 6 GiB of free memory (this process, the peer's copy, its decoding)")
    return bytes(GIB)


def test_one_gigabyte_frame_to_every_socket_type(rig, gigabyte):
    """One real 1 GiB frame to each kind of socket: PULL (receiver data, sender requests), REP (status, com,
    control shim), ROUTER (ingest), PUB (a subscription): everyone survives, answers and gives the memory back."""
    big = zmq.Frame(gigabyte)
    meta = _data_templates()[0][0]
    _check_barrage(rig, rig.receiver, lambda: push(
        rig.context, rig.data, zmq.PUSH, [[big, b""], [meta, big]],
        until=lambda: f"chunk 0 has {GIB} bytes, more than its chunksize 10" in rig.receiver.text()))
    for proc, endpoint, message in ((rig.receiver, rig.status, [big]),
                                    (rig.sender, rig.com, [b"4.4.3", b"1", big, b"[]"]),
                                    (rig.sender, rig.shim, [b"get", b"x", b"det", big])):
        replies = _check_barrage(rig, proc, lambda: request(rig.context, endpoint, [message], timeout_s=120))
        assert replies[0][1][0] in (b"ERROR", b"NO_VALID_SIGNAL"), replies[0][1]
    _check_barrage(rig, rig.sender, lambda: push(rig.context, rig.request, zmq.PUSH, [[b"NEXT", big]]))
    errors: list[bytes] = []
    _check_barrage(rig, rig.ingest_sender, lambda: push(
        rig.context, rig.ingest, zmq.DEALER, [[big], [ingest.encode(ingest.WRITE, file=9, offset=0), big]],
        lambda frames: errors.append(frames[0]), until=lambda: len(errors) >= 2))
    assert all(b'"op":"error"' in e for e in errors), errors

    def subscribe() -> None:
        peer = RawPeer(rig.receiver.endpoints()[1], b"SUB")
        peer.send([b"\x01" + gigabyte])
        peer.close()

    _check_barrage(rig, rig.receiver, subscribe)
