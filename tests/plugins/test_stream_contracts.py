"""The kernel's ``inline`` fetcher meets the fetcher contract, and ``StreamSourceContract`` runs against the test
stream source (tests/data/stream-dist: each message the test PUSHes becomes a frame or series event)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq
from stevedore import ExtensionManager

from hidra_core import FileEvent
from hidra_core.testing import FetcherContract, StreamSourceContract

STREAM_DIST = Path(__file__).resolve().parents[1] / "data" / "stream-dist"


class TestInlineFetcher(FetcherContract):
    driver_name = "inline"

    def make_event(self, tmp_path: Path, name: str, data: bytes) -> FileEvent:
        return FileEvent("tcp://dcu:9999", "", name, kind="frame", payload=memoryview(data), size=len(data))

    _SKIP = "in-memory data is immutable and never vanishes: the sender lets go of it itself"

    def test_size_change_after_stat_raises_oserror(self, *args: Any, **kwargs: Any) -> None:
        pytest.skip(self._SKIP)

    def test_stat_of_removed_data_is_none(self, *args: Any, **kwargs: Any) -> None:
        pytest.skip(self._SKIP)

    def test_remove_keeps_data_replaced_after_the_stat(self, *args: Any, **kwargs: Any) -> None:
        pytest.skip(self._SKIP)

    def test_identity_is_text_that_differs_between_versions(self, *args: Any, **kwargs: Any) -> None:
        pytest.skip(self._SKIP)

    def test_remove_is_idempotent(self, tmp_path: Path, fetcher: Any) -> None:
        event = self.make_event(tmp_path, "twice.bin", b"abc")
        stat = fetcher.stat(event)
        fetcher.remove(event, stat)
        fetcher.remove(event, stat)  # letting go twice is no error


@pytest.fixture(scope="module", autouse=True)
def stream_dist() -> Iterator[None]:
    sys.path.insert(0, str(STREAM_DIST))
    saved, ExtensionManager.ENTRY_POINT_CACHE = ExtensionManager.ENTRY_POINT_CACHE, {}
    try:
        yield
    finally:
        sys.path.remove(str(STREAM_DIST))
        ExtensionManager.ENTRY_POINT_CACHE = saved


class TestPushedSource(StreamSourceContract):
    driver_name = "pushed"
    _pushes: dict[Path, tuple[zmq.Socket, str]] = {}

    @pytest.fixture(autouse=True)
    def upstream(self, tmp_path: Path, zmq_context: zmq.Context) -> Iterator[None]:
        push = zmq_context.socket(zmq.PUSH)
        push.linger = 0
        port = push.bind_to_random_port("tcp://127.0.0.1")
        self._pushes[tmp_path] = (push, f"tcp://127.0.0.1:{port}")
        self._series = 0
        yield
        push.close()
        del self._pushes[tmp_path]

    def make_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"endpoint": self._pushes[tmp_path][1]}

    def produce_series(self, tmp_path: Path, frames: int) -> None:
        push = self._pushes[tmp_path][0]
        self._series += 1
        series = f"s{self._series}"

        def send(name: str, kind: str, data: bytes) -> None:
            push.send_multipart([json.dumps({"name": name, "kind": kind, "series": series}).encode(), data])

        send(f"{series}.start", "series_start", b"{}")
        for i in range(frames):
            send(f"{series}_{i:06d}", "frame", self.expected_frame(i))
        send(f"{series}.end", "series_end", b"")

    def expected_frame(self, index: int) -> bytes:
        return bytes([index]) * (100 + index)
