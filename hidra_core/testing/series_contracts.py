"""Contract test classes for drivers of in-memory data: stream sources (frames and series) and series writers.

Subclass one per driver, as with the classes in ``contracts``: set ``driver_name`` and implement the hooks.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import pytest

from hidra_core.interfaces import WriteTarget
from hidra_core.testing.contracts import EventSourceContract, _DriverContract
from hidra_core.types import FRAME, KINDS, SERIES_END, SERIES_START, FileEvent, payload_size

__all__ = ["SeriesWriterContract", "StreamSourceContract"]


def poll_until(source: Any, done: Any, timeout_s: float) -> list[FileEvent]:
    """Events of ``source.poll`` until ``done(events)`` holds; ``AssertionError`` naming what came after the
    deadline."""
    events: list[FileEvent] = []
    deadline = time.monotonic() + timeout_s
    while not done(events):
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout_s} s the source reported {len(events)} events: "
                                 f"{[(e.kind, e.file_id) for e in events[-5:]]} (last five)")
        events += source.poll(100)
    return events


def _ends(events: Sequence[FileEvent], series: int) -> bool:
    return sum(e.kind == SERIES_END for e in events) >= series


class StreamSourceContract(EventSourceContract):
    """Rules for event sources of in-memory data (detector streams, ingest sockets).

    Hooks: ``make_config(tmp_path)``; ``produce_series(tmp_path, frames)`` makes the upstream emit one whole series
    of ``frames`` frames (a simulator's arm/trigger/disarm) after ``open``; ``expected_frame(index)`` may return
    the bytes the ``index``-th frame's payload must hold (default: not checked). File events are not a stream
    source's business, so the file rules of ``EventSourceContract`` are skipped.
    """

    frames: ClassVar[int] = 5
    timeout_s: ClassVar[float] = 30.0

    def produce_series(self, tmp_path: Path, frames: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement produce_series(tmp_path, frames)")

    def expected_frame(self, index: int) -> bytes | None:
        return None

    def test_produced_file_is_reported(self, tmp_path: Path, opened_source: Any) -> None:
        pytest.skip("a stream source reports frames and series, not files")

    def test_nested_file_has_a_slash_separated_relative_path(self, tmp_path: Path, opened_source: Any) -> None:
        pytest.skip("a stream source reports frames and series, not files")

    def _emitted(self, tmp_path: Path, source: Any, count: int = 1) -> list[FileEvent]:
        for _ in range(count):
            self.produce_series(tmp_path, self.frames)
        return poll_until(source, lambda events: _ends(events, count), self.timeout_s)

    def test_a_series_is_start_frames_end_in_order(self, tmp_path: Path, opened_source: Any) -> None:
        events = self._emitted(tmp_path, opened_source)
        kinds = [e.kind for e in events]
        assert kinds == [SERIES_START, *[FRAME] * self.frames, SERIES_END], kinds
        assert len({e.series for e in events}) == 1 and events[0].series, "one non-empty series for all its events"
        for i, event in enumerate(e for e in events if e.kind == FRAME):
            expected = self.expected_frame(i)
            if expected is not None:
                assert bytes(memoryview(event.payload).cast("B")) == expected, f"frame {i} payload"

    def test_events_carry_their_data_size_and_json_metadata(self, tmp_path: Path, opened_source: Any) -> None:
        for event in self._emitted(tmp_path, opened_source):
            self.check_names(event)
            assert event.kind in KINDS
            assert event.payload is not None, f"{event.file_id}: a stream event carries its data (payload)"
            assert event.size in (None, payload_size(event.payload)), f"{event.file_id}: size != payload bytes"
            json.dumps(event.metadata, allow_nan=False)  # NOTE: raises on what the wire cannot carry

    def test_names_are_unique_within_and_across_series(self, tmp_path: Path, opened_source: Any) -> None:
        events = self._emitted(tmp_path, opened_source, count=2)
        ids = [e.file_id for e in events]
        assert len(ids) == len(set(ids)), "the sender holds events by name: two alike would collide"
        assert len({e.series for e in events}) == 2

    def test_the_default_fetcher_sends_in_memory_data(self) -> None:
        from hidra_core.host.drivers import load_driver_class

        assert load_driver_class(self.role, self.driver_name).default_fetcher == "inline"


class SeriesWriterContract(_DriverContract):
    """Rules for ``hidra.writers`` drivers that take series (``series_start``, ``frame``, ``series_end``).

    Hooks: ``frame(index)`` returns ``(metadata, payload)`` of a series' ``index``-th frame;
    ``start_metadata()`` and ``end_metadata()`` the ``series_start`` and ``series_end`` metadata (default: none);
    ``read_frames(root, relative_parts, series)`` the frames the finished output holds, as ``{index: bytes}``
    comparable with ``expected(index)`` (default: the payload), or ``None`` if there is no finished output.
    Writers are built with ``target`` set to a directory under ``tmp_path``.
    """

    role = "writer"
    frames: ClassVar[int] = 6

    def frame(self, index: int) -> tuple[Mapping[str, Any], bytes]:
        raise NotImplementedError(f"{type(self).__name__} must implement frame(index)")

    def start_metadata(self) -> Mapping[str, Any]:
        return {}

    def end_metadata(self) -> Mapping[str, Any]:
        """``series_end`` metadata beyond the facts (``frames``, ``missing``, ``aborted``) the tests set."""
        return {}

    def expected(self, index: int) -> bytes:
        return self.frame(index)[1]

    def read_frames(self, root: Path, relative_parts: tuple[str, ...], series: str) -> dict[int, bytes] | None:
        raise NotImplementedError(f"{type(self).__name__} must implement read_frames(root, relative_parts, series)")

    @pytest.fixture
    def target_root(self, tmp_path: Path) -> Path:
        root = tmp_path / "target"
        root.mkdir(exist_ok=True)
        return root

    def driver_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"target": str(tmp_path / "target")}

    @pytest.fixture
    def writer(self, tmp_path: Path, target_root: Path) -> Iterator[Any]:
        made = self.build(tmp_path)
        yield made
        made.shutdown()

    @staticmethod
    def item(root: Path, kind: str, name: str, metadata: Mapping[str, Any], series: str = "s1",
             parts: tuple[str, ...] = ("run",)) -> WriteTarget:
        return WriteTarget(str(root), parts, name, {"metadata": dict(metadata), "series": series}, kind, series)

    def store(self, writer: Any, items: Sequence[tuple[WriteTarget, bytes]]) -> list[BaseException | None]:
        """Each message through open/write/close, then one ``commit_each`` of the batch."""
        handles = []
        for item, data in items:
            handle = writer.open(item)
            writer.write(handle, data)
            writer.close(handle)
            handles.append(handle)
        return list(writer.commit_each(handles))

    def start(self, root: Path, series: str = "s1") -> tuple[WriteTarget, bytes]:
        return self.item(root, SERIES_START, f"{series}.start", self.start_metadata(), series), b""

    def frames_of(self, root: Path, indices: Sequence[int], series: str = "s1") -> list[tuple[WriteTarget, bytes]]:
        out = []
        for i in indices:
            metadata, payload = self.frame(i)
            out.append((self.item(root, FRAME, f"{series}_{i:06d}", metadata, series), payload))
        return out

    def end(self, root: Path, series: str = "s1", **facts: Any) -> tuple[WriteTarget, bytes]:
        metadata = {"frames": self.frames, "missing": 0, "aborted": False, **self.end_metadata(), **facts}
        return self.item(root, SERIES_END, f"{series}.end", metadata, series), b""

    def _check(self, root: Path, series: str = "s1") -> dict[int, bytes]:
        frames = self.read_frames(root, ("run",), series)
        assert frames is not None, f"no finished output for series {series}"
        assert sorted(frames) == list(range(self.frames)), f"frames held: {sorted(frames)}"
        for i, data in frames.items():
            assert data == self.expected(i), f"frame {i} differs from what was written"
        return frames

    def test_accepts_the_series_messages(self, writer: Any) -> None:
        assert {SERIES_START, FRAME, SERIES_END} <= set(writer.accepts)

    def test_a_series_becomes_one_finished_output_with_every_frame(self, writer: Any, target_root: Path) -> None:
        items = [self.start(target_root), *self.frames_of(target_root, range(self.frames))]
        assert self.store(writer, items) == [None] * len(items)
        assert self.read_frames(target_root, ("run",), "s1") is None, "the output is visible before series_end"
        assert self.store(writer, [self.end(target_root)]) == [None]
        self._check(target_root)

    def test_a_frame_sent_again_is_stored_once(self, writer: Any, target_root: Path) -> None:
        items = [self.start(target_root), *self.frames_of(target_root, range(self.frames))]
        assert self.store(writer, items) == [None] * len(items)
        again = self.frames_of(target_root, [1, self.frames - 1])
        assert self.store(writer, again) == [None, None], "a duplicate is confirmed, not refused"
        assert self.store(writer, [self.end(target_root)]) == [None]
        self._check(target_root)

    def test_an_aborted_frame_leaves_nothing(self, writer: Any, target_root: Path) -> None:
        items = [self.start(target_root), *self.frames_of(target_root, range(self.frames))]
        assert self.store(writer, items) == [None] * len(items)
        metadata, payload = self.frame(0)
        handle = writer.open(self.item(target_root, FRAME, "s1_000000", metadata))
        writer.write(handle, b"\0" * len(payload))  # a corrupt copy, caught by the receiver's checksum
        writer.abort(handle)
        assert self.store(writer, [self.end(target_root)]) == [None]
        self._check(target_root)

    def test_a_new_writer_continues_a_series_its_predecessor_left(self, tmp_path: Path, target_root: Path) -> None:
        first = self.build(tmp_path)
        half = self.frames // 2
        items = [self.start(target_root), *self.frames_of(target_root, range(half))]
        assert self.store(first, items) == [None] * len(items)
        first.shutdown()  # NOTE: the receiver stopped; its successor gets only what was not confirmed
        second = self.build(tmp_path)
        try:
            rest = self.frames_of(target_root, range(half, self.frames))
            assert self.store(second, [*rest, self.end(target_root)]) == [None] * (len(rest) + 1)
        finally:
            second.shutdown()
        self._check(target_root)

    def test_two_series_at_once_stay_apart(self, writer: Any, target_root: Path) -> None:
        a, b = self.frames_of(target_root, range(self.frames), "a"), self.frames_of(target_root, range(self.frames),
                                                                                     "b")
        items = [self.start(target_root, "a"), self.start(target_root, "b")]
        items += [x for pair in zip(a, b) for x in pair]
        assert self.store(writer, items) == [None] * len(items)
        assert self.store(writer, [self.end(target_root, "a"), self.end(target_root, "b")]) == [None, None]
        self._check(target_root, "a")
        self._check(target_root, "b")

    def test_a_frame_of_a_series_never_started_is_an_error(self, writer: Any, target_root: Path) -> None:
        (item, payload), = self.frames_of(target_root, [0], "never")
        with pytest.raises(Exception) as info:
            errors = self.store(writer, [(item, payload)])
            if errors[0] is not None:
                raise errors[0]
        assert "never" in str(info.value), f"the error names the series: {info.value}"
