"""The ACME event source against a real PUB socket playing the detector, and the ACME metadata hook."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq

pytest.importorskip("hidra_acme", reason="install it first: pip install -e contrib/hidra-acme")

from hidra_core import FileEvent  # noqa: E402
from hidra_core import create_driver  # noqa: E402
from hidra_core.testing import EventSourceContract, collect_events, wait_until  # noqa: E402

import hidra_acme.hooks  # noqa: E402


class Detector:
    """Plays the ACME detector: binds a publisher on a random port and sends file-closed notices.

    It is an XPUB, a PUB that also hands over subscriptions, so a test can wait until the source has
    subscribed instead of sleeping and hoping.
    """

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        # NOTE: a PUB drops above its HWM (1000 by default) when the subscriber lags, as it may on a loaded
        # machine while a test sends a burst; the test is about batching, not about PUB/SUB loss.
        self.sock.sndhwm = 0
        self.endpoint = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"

    def wait_for_subscriber(self, topic: bytes = b"file-closed") -> None:
        assert self.sock.poll(5000), "the source did not subscribe within 5 s"
        assert self.sock.recv() == b"\x01" + topic

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def notify(self, path: str, size: int | None = 8) -> None:
        self.send(b"file-closed", json.dumps({"path": path, "size": size}).encode())


class TestAcmeContract(EventSourceContract):
    driver_name = "acme"

    @pytest.fixture(autouse=True)
    def _detector(self, socket: Callable[..., zmq.Socket]) -> None:
        self.detector = Detector(socket(zmq.XPUB))

    def make_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"endpoint": self.detector.endpoint, "root": str(tmp_path / "data")}

    def produce(self, tmp_path: Path, relative_path: str, filename: str) -> None:
        self.detector.wait_for_subscriber()
        self.detector.notify(f"{relative_path}/{filename}" if relative_path else filename)


@pytest.fixture
def detector(socket: Callable[..., zmq.Socket]) -> Detector:
    return Detector(socket(zmq.XPUB))


@pytest.fixture
def source(detector: Detector, tmp_path: Path, zmq_context: zmq.Context) -> Iterator[Any]:
    src = create_driver("event source", "acme", {"endpoint": detector.endpoint, "root": str(tmp_path)}, "<test>",
                        "sender.source.acme")
    src.open(zmq_context)
    detector.wait_for_subscriber()
    yield src
    src.close()


def test_notice_becomes_an_event_the_file_fetcher_can_read(source: Any, detector: Detector,
                                                           tmp_path: Path) -> None:
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "img_0001.h5").write_bytes(b"12345678")
    detector.notify("run1/img_0001.h5", 8)
    [event] = collect_events(source, ["run1/img_0001.h5"])
    assert event == FileEvent(str(tmp_path), "run1", "img_0001.h5", {"detector": "acme", "size": 8})
    fetcher = create_driver("fetcher", source.default_fetcher, {}, "<test>", "sender.fetcher.file")
    stat = fetcher.stat(event)
    assert stat is not None and stat.size == 8


def test_absolute_paths_below_the_root_are_made_relative(source: Any, detector: Detector, tmp_path: Path) -> None:
    detector.notify(f"{tmp_path}/run2/a.h5")
    [event] = collect_events(source, ["run2/a.h5"])
    assert (event.source_path, event.relative_path) == (str(tmp_path), "run2")


def test_bad_notices_are_dropped_and_the_source_keeps_going(source: Any, detector: Detector,
                                                            tmp_path: Path) -> None:
    bad = [
        (b"file-closed", b"{not json"),
        (b"file-closed", b'{"size": 1}'),  # no path
        (b"file-closed", b'["run1/a.h5"]'),  # not an object
        (b"file-closed", json.dumps({"path": "../escape.h5"}).encode()),
        (b"file-closed", json.dumps({"path": "/etc/passwd"}).encode()),
        (b"file-closed", json.dumps({"path": "run1//a.h5"}).encode()),
        (b"file-closed", json.dumps({"path": "a.h5", "size": "big"}).encode()),
        (b"file-closed",),
    ]
    for frames in bad:
        detector.send(*frames)
    detector.send(b"file-closed-v2", json.dumps({"path": "other-topic.h5"}).encode())  # prefix-matches the SUB
    detector.notify("good.h5")
    events = collect_events(source, ["good.h5"])
    assert [e.file_id for e in events] == ["good.h5"]
    assert source.dropped == len(bad) + 1


def test_a_burst_is_returned_in_bounded_batches(source: Any, detector: Detector) -> None:
    names = [f"burst/f{n:04d}.h5" for n in range(2500)]
    for name in names:
        detector.notify(name)
    batches: list[list[FileEvent]] = []

    def all_seen() -> bool:
        batches.append(source.poll(50))
        return sum(map(len, batches)) >= len(names)

    wait_until(all_seen, what="2500 notices", interval_s=0)
    assert max(map(len, batches)) <= 1000
    assert [e.file_id for batch in batches for e in batch] == names


def test_a_plain_pub_socket_works_too(socket: Callable[..., zmq.Socket], tmp_path: Path,
                                      zmq_context: zmq.Context) -> None:
    pub = socket(zmq.PUB)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    src = create_driver("event source", "acme", {"endpoint": endpoint, "root": str(tmp_path)}, "<test>",
                        "sender.source.acme")
    src.open(zmq_context)
    try:
        # A PUB cannot tell when a subscriber is ready: repeat the notice until it arrives.
        def reported() -> list[FileEvent]:
            pub.send_multipart([b"file-closed", b'{"path": "plain.h5"}'])
            return [e for e in src.poll(20) if e.file_id == "plain.h5"]

        assert wait_until(reported, what="a notice over a plain PUB", interval_s=0)
    finally:
        src.close()


def test_custom_topic(detector: Detector, tmp_path: Path, zmq_context: zmq.Context) -> None:
    src = create_driver("event source", "acme", {"endpoint": detector.endpoint, "root": str(tmp_path),
                                                 "topic": "closed"}, "<test>", "sender.source.acme")
    src.open(zmq_context)
    try:
        detector.wait_for_subscriber(b"closed")
        detector.send(b"closed", b'{"path": "t.h5"}')
        assert [e.file_id for e in collect_events(src, ["t.h5"])] == ["t.h5"]
    finally:
        src.close()


def test_hook_tags_acme_events_only(plugin_host: Any, register_plugin: Callable[..., object]) -> None:
    register_plugin(hidra_acme.hooks, name="acme")
    acme = FileEvent("/data", "run1", "a.h5", {"detector": "acme", "size": 1})
    assert plugin_host.enrich_metadata(acme, {}) == {"detector": "acme"}
    assert plugin_host.enrich_metadata(FileEvent("/data", "run1", "a.h5"), {}) == {}
    assert plugin_host.enrich_metadata(FileEvent("/data", "", "x", {"detector": "other"}), {}) == {}


def test_entry_points_load_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from hidra_core import PluginHost

    monkeypatch.setenv("HIDRA_LOAD_PLUGINS", "acme")
    host = PluginHost()
    [status] = host.load_entry_points()
    assert (status.name, status.distribution, status.loaded) == ("acme", "hidra-acme", True)
    assert host.has_enrichers
