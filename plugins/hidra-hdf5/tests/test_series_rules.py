"""The series rules against ``hdf5``: the kernel's ``SeriesWriterContract`` (``TestHdf5SeriesContract``), and
stricter checks of the same rules on whole files (``SeriesRules``, whose helpers build the messages as the
receiver hands them over; the other tests of this plugin use them too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytest

from hidra_core import FILE, FRAME, SERIES_END, SERIES_START, WriteTarget, create_driver
from hidra_core.testing import SeriesWriterContract


def frames_of(count: int, shape: tuple[int, int] = (48, 64), dtype: str = "<u2", seed: int = 7) -> list[np.ndarray]:
    """Diffraction-like frames: Poisson counts around a bright centre (never all zeros)."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape)
    mean = 3.0 + 60.0 * np.exp(-np.hypot(y - shape[0] / 2, x - shape[1] / 2) / 9.0)
    return [rng.poisson(mean * (0.5 + n % 5 / 4)).astype(dtype) for n in range(count)]


class SeriesRules:
    """Whole-file checks. Hooks: ``make_writer(root, **options)``, ``read_frames(root, name)``, ``file_names``."""

    series = "series_1"

    def make_writer(self, root: Path, **options: Any) -> Any:
        raise NotImplementedError

    def read_frames(self, root: Path, name: str) -> np.ndarray:
        """Every frame of the stored series file ``name`` (relative to ``root``), decoded, in index order."""
        raise NotImplementedError

    def file_names(self, series: str, aborted: bool = False) -> str:
        raise NotImplementedError

    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        path = tmp_path / "target"
        path.mkdir()
        return path

    # --- the messages --------------------------------------------------------------------------------------
    @staticmethod
    def item(root: Path, kind: str, series: str, meta: dict[str, Any], relative_path: str = "") -> WriteTarget:
        names = {SERIES_START: f"{series}.start", SERIES_END: f"{series}.end"}
        filename = names.get(kind) or f"{series}_{meta['image_id']:06d}"
        parts = tuple(relative_path.split("/")) if relative_path else ()
        return WriteTarget(str(root), parts, filename, {"metadata": meta}, kind=kind, series=series)

    @staticmethod
    def start_meta(series_id: int = 1, uid: str | None = "uid-1", channels: Sequence[str] = ("data",),
                   blobs: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        return {"format": "v2", "series_id": series_id, "series_unique_id": uid, "header_detail": "all",
                "config": {"count_time": 0.001, "image_size_x": 64, "goniometer": {"omega": {"start": 0.0}}},
                "channels": list(channels), "blobs": list(blobs)}

    @staticmethod
    def frame_meta(image_id: int, frame: np.ndarray, compression: str = "none", framed: bool = False,
                   channel_index: int = 0, series_id: int = 1, uid: str | None = "uid-1") -> dict[str, Any]:
        return {"series_id": series_id, "series_unique_id": uid, "image_id": image_id, "channel": "data",
                "channel_index": channel_index, "shape": list(frame.shape), "dtype": frame.dtype.str,
                "compression": compression, "hdf5_framed": framed, "encoding": "test",
                "element_size": frame.dtype.itemsize}

    @staticmethod
    def end_meta(frames: int, aborted: bool = False, series_id: int = 1, uid: str | None = "uid-1") -> dict[str, Any]:
        return {"series_id": series_id, "series_unique_id": uid, "frames": frames, "missing": 0, "aborted": aborted,
                "reason": "source closed" if aborted else None}

    @staticmethod
    def send(writer: Any, item: WriteTarget, payload: Any = b"") -> Any:
        handle = writer.open(item)
        writer.write(handle, payload)
        writer.close(handle)
        return handle

    def commit(self, writer: Any, handles: list[Any]) -> None:
        assert writer.commit_each(handles) == [None] * len(handles)

    def run_series(self, writer: Any, root: Path, frames: list[np.ndarray], ids: Sequence[int] | None = None,
                   encode: Callable[[np.ndarray], Any] = lambda f: f.tobytes(), aborted: bool = False,
                   series: str | None = None, **frame_options: Any) -> None:
        series = series or self.series
        handles = [self.send(writer, self.item(root, SERIES_START, series, self.start_meta()))]
        for n in ids if ids is not None else range(len(frames)):
            meta = self.frame_meta(n, frames[n], **frame_options)
            handles.append(self.send(writer, self.item(root, FRAME, series, meta), encode(frames[n])))
            if len(handles) == 4:
                self.commit(writer, handles)
                handles = []
        handles.append(self.send(writer, self.item(root, SERIES_END, series, self.end_meta(len(frames), aborted))))
        self.commit(writer, handles)

    # --- the rules -----------------------------------------------------------------------------------------
    def test_start_frames_end_make_one_file_with_every_frame(self, root: Path) -> None:
        frames = frames_of(10)
        writer = self.make_writer(root)
        self.run_series(writer, root, frames)
        writer.shutdown()
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
            self.file_names(self.series)]
        np.testing.assert_array_equal(self.read_frames(root, self.file_names(self.series)), np.stack(frames))

    def test_resent_frame_is_confirmed_and_not_stored_twice(self, root: Path) -> None:
        frames = frames_of(6)
        writer = self.make_writer(root)
        self.run_series(writer, root, frames, ids=[0, 1, 2, 2, 3, 1, 4, 5, 5])
        np.testing.assert_array_equal(self.read_frames(root, self.file_names(self.series)), np.stack(frames))

    def test_frame_aborted_before_close_leaves_nothing(self, root: Path) -> None:
        frames = frames_of(3)
        writer = self.make_writer(root)
        self.commit(writer, [self.send(writer, self.item(root, SERIES_START, self.series, self.start_meta()))])
        handle = writer.open(self.item(root, FRAME, self.series, self.frame_meta(1, frames[1])))
        writer.write(handle, frames[1].tobytes())
        writer.abort(handle)
        self.commit(writer, [self.send(writer, self.item(root, FRAME, self.series, self.frame_meta(0, frames[0])),
                                       frames[0].tobytes()),
                             self.send(writer, self.item(root, SERIES_END, self.series, self.end_meta(1)))])
        np.testing.assert_array_equal(self.read_frames(root, self.file_names(self.series)), np.stack(frames[:1]))

    def test_aborted_series_is_kept_under_a_name_that_says_so(self, root: Path) -> None:
        frames = frames_of(3)
        writer = self.make_writer(root)
        self.run_series(writer, root, frames, aborted=True)
        assert not (root / self.file_names(self.series)).exists()
        stored = self.read_frames(root, self.file_names(self.series, aborted=True))
        np.testing.assert_array_equal(stored, np.stack(frames))

    def test_frame_of_a_series_never_started_is_refused_and_stores_nothing(self, root: Path) -> None:
        frame = frames_of(1)[0]
        writer = self.make_writer(root)
        with pytest.raises(Exception, match="no series_start"):
            self.send(writer, self.item(root, FRAME, "series_9", self.frame_meta(0, frame)), frame.tobytes())
        assert not [p for p in root.rglob("*") if p.is_file()]

    def test_series_continues_in_a_new_writer_after_shutdown(self, root: Path) -> None:
        frames = frames_of(8)
        first = self.make_writer(root)
        handles = [self.send(first, self.item(root, SERIES_START, self.series, self.start_meta()))]
        handles += [self.send(first, self.item(root, FRAME, self.series, self.frame_meta(n, frames[n])),
                              frames[n].tobytes()) for n in range(5)]
        self.commit(first, handles)
        first.shutdown()
        second = self.make_writer(root)
        handles = [self.send(second, self.item(root, FRAME, self.series, self.frame_meta(n, frames[n])),
                             frames[n].tobytes()) for n in range(3, 8)]
        handles.append(self.send(second, self.item(root, SERIES_END, self.series, self.end_meta(8))))
        self.commit(second, handles)
        np.testing.assert_array_equal(self.read_frames(root, self.file_names(self.series)), np.stack(frames))


class TestHdf5SeriesRules(SeriesRules):
    def make_writer(self, root: Path, **options: Any) -> Any:
        # NOTE: built as the receiver builds it: the entry point by name, the options through its config model
        return create_driver("writer", "hdf5", options, "<test>", "receiver.hdf5", target=str(root))

    def read_frames(self, root: Path, name: str) -> np.ndarray:
        import h5py
        import hdf5plugin  # noqa: F401  (registers the filters)

        with h5py.File(root / name, "r") as f:
            return np.asarray(f["entry/data/data"][()])

    def file_names(self, series: str, aborted: bool = False) -> str:
        return f"{series}.aborted.h5" if aborted else f"{series}.h5"


class TestHdf5SeriesContract(SeriesWriterContract):
    driver_name = "hdf5"
    _frames = frames_of(SeriesWriterContract.frames)

    def start_metadata(self) -> dict[str, Any]:
        return SeriesRules.start_meta()

    def end_metadata(self) -> dict[str, Any]:
        return {k: v for k, v in SeriesRules.end_meta(0).items() if k.startswith("series")}

    def frame(self, index: int) -> tuple[dict[str, Any], bytes]:
        frame = self._frames[index]
        return SeriesRules.frame_meta(index, frame), frame.tobytes()

    def read_frames(self, root: Path, relative_parts: tuple[str, ...], series: str) -> dict[int, bytes] | None:
        import h5py
        import hdf5plugin  # noqa: F401  (registers the filters)

        path = root.joinpath(*relative_parts, f"{series}.h5")
        if not path.exists():
            return None
        with h5py.File(path, "r") as f:
            data = f["entry/data/data"]
            held = [i for i in range(data.shape[0]) if data.id.get_chunk_info_by_coord((i, 0, 0)).byte_offset
                    is not None]
            return {i: data[i].tobytes() for i in held}

    def test_plain_files_are_refused_with_a_clear_error(self, target_root: Path, writer: Any) -> None:
        with pytest.raises(Exception, match="takes series messages, not 'file'"):
            writer.open(WriteTarget(str(target_root), (), "a.dat", {}, kind=FILE))
