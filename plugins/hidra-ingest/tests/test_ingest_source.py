"""The ``zmq_ingest`` source in this process against real producers: the ``Ingest`` client (in a thread, as it
waits for acknowledgements the test's polls send) and a raw DEALER socket playing a hostile producer."""
from __future__ import annotations

import json
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from hidra_core import Ingest, IngestError, ingest
from hidra_core.testing import EventSourceContract, collect_events, wait_until


def _endpoint() -> str:
    # NOTE: an ipc socket in the short temp dir: tmp_path may exceed the 107 bytes a socket path may have
    return f"ipc://{tempfile.gettempdir()}/hidra-ingest-{uuid.uuid4().hex[:12]}.sock"


class TestIngestSourceContract(EventSourceContract):
    driver_name = "zmq_ingest"
    _endpoints: dict[Path, str] = {}
    _producers: list[threading.Thread] = []

    def make_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"endpoint": self._endpoints.setdefault(tmp_path, _endpoint())}

    def produce(self, tmp_path: Path, relative_path: str, filename: str) -> None:
        name = f"{relative_path}/{filename}" if relative_path else filename

        def push() -> None:
            producer = Ingest(self._endpoints[tmp_path], timeout_s=10)
            try:
                producer.send_file(name, b"contract data")
                producer.flush()
            except IngestError:  # NOTE: the contract stops polling once it has the event: no acknowledgement
                pass
            finally:
                producer._sock.close(linger=0)

        thread = threading.Thread(target=push, daemon=True)
        thread.start()
        self._producers.append(thread)


@pytest.fixture
def source(zmq_context: zmq.Context) -> Iterator[Any]:
    from hidra_core import create_driver

    made = create_driver("event source", "zmq_ingest", {"endpoint": _endpoint(), "max_file_bytes": 1000,
                                                        "max_open_files": 2, "max_open_bytes": 1500,
                                                        "abandon_after_s": 600},
                         "<test>", "sender.source.zmq_ingest")
    made.open(zmq_context)
    yield made
    made.close()


def _in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _poll_while(source: Any, thread: threading.Thread) -> list[Any]:
    events: list[Any] = []

    def finished() -> bool:
        events.extend(source.poll(20))
        return not thread.is_alive()

    wait_until(finished, 30, what="the producer to finish", interval_s=0)
    return events


def test_files_in_one_message_and_in_pieces_arrive_whole_with_the_producer_named(source: Any) -> None:
    big = bytes(range(256)) * 3  # 768 bytes, in three writes

    def produce() -> None:
        with Ingest(source.endpoint, producer="daq-1", timeout_s=10) as producer:
            producer.send_file("run1/a.raw", b"one message")
            producer.create_file("run1/b.raw")
            for start in range(0, len(big), 256):
                producer.write(memoryview(big)[start:start + 256])
            producer.close_file(wait=True)
            producer.create_file("empty.raw")
            producer.close_file()

    thread, errors = _in_thread(produce)
    events = _poll_while(source, thread)
    assert errors == []
    got = {e.file_id: bytes(memoryview(e.payload)) for e in events}
    assert got == {"run1/a.raw": b"one message", "run1/b.raw": big, "empty.raw": b""}
    assert all(e.metadata == {"producer": "daq-1"} and e.size == len(got[e.file_id]) for e in events)


@pytest.fixture
def raw(zmq_context: zmq.Context, source: Any) -> Iterator[zmq.Socket]:
    sock = zmq_context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(source.endpoint)
    yield sock
    sock.close()


def _exchange(source: Any, raw: zmq.Socket, frames: list[bytes]) -> tuple[list[Any], dict[str, Any]]:
    """Send one message, poll the source until it answered; the events and the (non-ack) reply."""
    raw.send_multipart(frames)
    events: list[Any] = []

    def answered() -> dict[str, Any] | None:
        events.extend(source.poll(20))
        while raw.poll(0):
            reply = json.loads(raw.recv())
            if reply["op"] == "error":
                return dict(reply)
        return None

    reply = wait_until(answered, 10, what="the source's reply", interval_s=0)
    assert reply is not None
    return events, reply


def _header(op: str, **fields: Any) -> bytes:
    return ingest.encode(op, **fields)


HOSTILE = {
    "wrong version": ([json.dumps({"v": 99, "op": "file", "file": 1}).encode(), b"x"], "unsupported version 99"),
    "unknown op": ([json.dumps({"v": 1, "op": "explode", "file": 1}).encode()], "unknown op 'explode'"),
    "write without create": ([_header("write", file=5, offset=0), b"x"], "write of file 5, which is not open"),
    "close without create": ([_header("close", file=6, size=0)], "close of file 6, which is not open"),
    "huge name": ([_header("file", file=1, name="n" * 300, producer="p"), b"x"], "300 bytes"),
    "bad utf-8": ([b'{"v": 1, "op": "file", "name": "\xff\xfe"}', b"x"], "not a UTF-8 JSON object"),
    "surrogate name": ([_header("file", file=1, name="\udcff", producer="p"), b"x"], "not valid UTF-8"),
    "dot-dot": ([_header("file", file=1, name="../x", producer="p"), b"x"], "'..' component"),
    "absolute": ([_header("file", file=1, name="/etc/passwd", producer="p"), b"x"], "is absolute"),
    "over max_file_bytes": ([_header("file", file=1, name="big", producer="p"), b"x" * 1001], "max_file_bytes"),
    "garbage frames": ([b"\x00\x01garbage", b"more"], "not a UTF-8 JSON object"),
    "huge header": ([b"{" + b" " * (64 * 1024) + b"}"], "header of 65538 bytes"),
    "missing data frame": ([_header("file", file=1, name="a", producer="p")], "takes 1 data frame(s), got 0"),
    "negative file number": ([_header("close", file=-1, size=0)], "'file' must be a non-negative integer"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_message_gets_a_clear_error_and_the_source_keeps_serving(source: Any, raw: zmq.Socket,
                                                                          case: str) -> None:
    frames, expected = HOSTILE[case]
    events, reply = _exchange(source, raw, frames)
    assert events == []
    assert expected in reply["error"], reply
    assert source.stats["refused"] + source.stats["malformed"] == 1
    raw.send_multipart([_header("file", file=7, name="after.dat", producer="p"), b"fine"])
    assert [bytes(e.payload) for e in collect_events(source, ["after.dat"], 10)] == [b"fine"]


def test_file_growing_past_max_file_bytes_is_refused_and_its_partial_dropped(source: Any, raw: zmq.Socket) -> None:
    raw.send_multipart([_header("create", file=1, name="grows", producer="p")])
    raw.send_multipart([_header("write", file=1, offset=0), b"x" * 600])
    events, reply = _exchange(source, raw, [_header("write", file=1, offset=600), b"x" * 600])
    assert "'grows' exceeds max_file_bytes (1000)" in reply["error"]
    raw.send_multipart([_header("write", file=1, offset=1200), b"x"])  # the rest of a refused file: ignored
    raw.send_multipart([_header("close", file=1, size=1201)])
    raw.send_multipart([_header("file", file=2, name="next", producer="p"), b"ok"])
    events += collect_events(source, ["next"], 10)
    assert [e.file_id for e in events] == ["next"]
    assert source.stats["refused"] == 1 and source.open_files == []


def test_lost_write_is_refused_instead_of_storing_a_file_with_a_hole(source: Any, raw: zmq.Socket) -> None:
    raw.send_multipart([_header("create", file=1, name="holey", producer="p")])
    raw.send_multipart([_header("write", file=1, offset=0), b"abc"])
    events, reply = _exchange(source, raw, [_header("write", file=1, offset=10), b"def"])
    assert "data at offset 10, but 3 bytes arrived" in reply["error"] and events == []


def test_more_open_files_than_max_open_files_are_refused(source: Any, zmq_context: zmq.Context,
                                                          raw: zmq.Socket) -> None:
    others = []
    for n in range(2):
        sock = zmq_context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(source.endpoint)
        sock.send_multipart([_header("create", file=1, name=f"open{n}", producer=f"p{n}")])
        others.append(sock)
    wait_until(lambda: source.poll(20) == [] and len(source.open_files) == 2,
               10, what="two open files", interval_s=0)
    _, reply = _exchange(source, raw, [_header("create", file=1, name="third", producer="p")])
    assert "2 files are open already (max_open_files)" in reply["error"]
    for sock in others:
        sock.close()


def test_producer_gets_the_refusal_as_an_ingest_error_naming_endpoint_and_cause(source: Any) -> None:
    def produce() -> None:
        with Ingest(source.endpoint, timeout_s=10) as producer:
            producer.send_file("../escape", b"x", wait=True)

    thread, errors = _in_thread(produce)
    _poll_while(source, thread)
    assert len(errors) == 1 and isinstance(errors[0], IngestError)
    assert source.endpoint in str(errors[0]) and "'..' component" in str(errors[0])


def test_producer_without_a_sender_times_out_naming_the_endpoint() -> None:
    endpoint = _endpoint()
    producer = Ingest(endpoint, timeout_s=0.2)
    try:
        producer.send_file("a", b"x")
        with pytest.raises(IngestError, match=f"{endpoint}: no acknowledgement of file 1 within 0.2 s"):
            producer.flush()
    finally:
        producer._sock.close(linger=0)


def test_producer_that_disconnects_mid_file_leaves_nothing(source: Any, zmq_context: zmq.Context) -> None:
    sock = zmq_context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(source.endpoint)
    sock.send_multipart([_header("create", file=1, name="half", producer="p")])
    sock.send_multipart([_header("write", file=1, offset=0), b"abc"])
    wait_until(lambda: source.poll(20) == [] and source.open_files, 10, what="the open file",
               interval_s=0)
    sock.close()
    wait_until(lambda: source.poll(20) == [] and source.stats["abandoned"] == 1, 10,
               what="the partial file to be discarded", interval_s=0)
    assert source.open_files == []


def test_file_in_one_message_is_passed_on_without_a_copy(source: Any, raw: zmq.Socket) -> None:
    raw.send_multipart([_header("file", file=1, name="zero-copy", producer="p"), b"z" * 500], copy=False)
    [event] = collect_events(source, ["zero-copy"], 10)
    assert isinstance(event.payload, memoryview) and isinstance(event.payload.obj, zmq.Frame)


def test_hidra_plugins_lists_the_source() -> None:
    import subprocess
    import sys

    listing = subprocess.run([sys.executable, "-m", "hidra_core", "plugins"], capture_output=True, text=True,
                             timeout=60).stdout
    assert any(line.split()[:3] == ["hidra.event_sources", "zmq_ingest", "hidra-ingest"] and line.split()[-1] == "ok"
               for line in listing.splitlines()), listing


def test_open_file_of_a_producer_that_goes_quiet_is_discarded_after_abandon_after_s(zmq_context: zmq.Context) -> None:
    from hidra_core import create_driver

    quiet = create_driver("event source", "zmq_ingest", {"endpoint": _endpoint(), "abandon_after_s": 0.2},
                          "<test>", "sender.source.zmq_ingest")
    quiet.open(zmq_context)
    sock = zmq_context.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(quiet.endpoint)
        sock.send_multipart([_header("create", file=1, name="stalled", producer="p")])
        wait_until(lambda: quiet.poll(20) == [] and quiet.stats["abandoned"] == 1, 10,
                   what="the quiet producer's file to be discarded", interval_s=0)
        errors = [json.loads(m) for m in iter(lambda: sock.recv() if sock.poll(1000) else None, None)
                  if json.loads(m)["op"] == "error"]
        assert "'stalled' discarded: nothing arrived for 0.2 s (abandon_after_s)" in errors[0]["error"]
    finally:
        sock.close()
        quiet.close()


def test_open_files_together_are_bounded_by_max_open_bytes_and_refusals_free_their_bytes(
        source: Any, zmq_context: zmq.Context, raw: zmq.Socket) -> None:
    other = zmq_context.socket(zmq.DEALER)
    other.linger = 0
    other.connect(source.endpoint)
    try:
        other.send_multipart([_header("create", file=1, name="first", producer="q")])
        other.send_multipart([_header("write", file=1, offset=0), b"a" * 800])
        wait_until(lambda: source.poll(20) == [] and source.open_files == ["first"], 10, what="the first file",
                   interval_s=0)
        raw.send_multipart([_header("create", file=1, name="second", producer="p")])
        _, reply = _exchange(source, raw, [_header("write", file=1, offset=0), b"b" * 800])
        assert "'second': the files being assembled hold 800 bytes already (max_open_bytes 1500)" in reply["error"]
        _, reply = _exchange(source, other, [_header("close", file=1, size=799)])
        assert "'first': closed with size 799, 800 bytes arrived" in reply["error"]
        raw.send_multipart([_header("create", file=2, name="third", producer="p")])
        raw.send_multipart([_header("write", file=2, offset=0), b"c" * 800])
        raw.send_multipart([_header("close", file=2, size=800)])
        [event] = collect_events(source, ["third"], 10)
        assert bytes(event.payload) == b"c" * 800
    finally:
        other.close()


def test_client_misuse_is_an_ingest_error_naming_what_to_do_first() -> None:
    producer = Ingest(_endpoint(), timeout_s=0.2)
    try:
        with pytest.raises(IngestError, match=r"write\(\) without an open file: create_file\(\) first"):
            producer.write(b"x")
        with pytest.raises(IngestError, match=r"close_file\(\) without an open file"):
            producer.close_file()
    finally:
        producer.close()


def test_a_gap_in_a_producers_file_numbers_is_reported_as_lost_files(source: Any, raw: zmq.Socket) -> None:
    raw.send_multipart([_header("file", file=1, name="one", producer="p"), b"1"])
    events, reply = _exchange(source, raw, [_header("file", file=4, name="four", producer="p"), b"4"])
    assert "files 2 to 3 never arrived" in reply["error"] and source.stats["lost"] == 1
    assert [e.file_id for e in events] == ["one", "four"]


def test_files_lost_with_a_restarted_source_are_an_error_not_an_acknowledgement(zmq_context: zmq.Context) -> None:
    from hidra_core import create_driver

    def started(endpoint: str) -> Any:
        made = create_driver("event source", "zmq_ingest", {"endpoint": endpoint}, "<test>", "sender.source.zmq_ingest")
        made.open(zmq_context)
        return made

    def restarted(endpoint: str) -> Any:
        try:
            return started(endpoint)
        except ValueError:  # NOTE: the old socket's port is released by ZeroMQ's reaper a moment after close()
            return None

    first = started("tcp://127.0.0.1:0")
    endpoint = first.endpoint
    producer = Ingest(endpoint, timeout_s=10)
    try:
        producer.send_file("a", b"1")
        collect_events(first, ["a"], 10)
        wait_until(lambda: first.poll(0) == [] and producer.flush() is None and producer.acknowledged == 1, 10,
                   what="the acknowledgement of the first file")
        producer.send_file("b", b"2")
        producer.send_file("c", b"3")
        collect_events(first, ["b", "c"], 10)  # NOTE: taken, then lost with the source before acknowledged
        # NOTE: d is sent once the producer is connected to the new source: sent into the dying connection it
        # would be lost on the wire (a gap the source reports), which is not what this test is about
        monitor = producer._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        first.close()
        second = wait_until(lambda: restarted(endpoint), 10, what="the port to be free again")
        try:
            wait_until(lambda: monitor.poll(100) and recv_monitor_message(monitor), 30,
                       what="the producer's connection to the restarted source")
            producer._sock.disable_monitor()
            monitor.close(linger=0)
            producer.send_file("d", b"4")
            collect_events(second, ["d"], 10)
            second.poll(0)  # acknowledges d
            # NOTE: b is acknowledged too when collect_events polled again between b and c: then only c is lost
            with pytest.raises(IngestError, match="files [23] to 3 never reached the sender"):
                producer.flush()
        finally:
            second.close()
    finally:
        producer._sock.close(linger=0)
