"""The ``hdf5`` writer: every encoding a detector sends read back with h5py + hdf5plugin, header, names, clashes,
recovery after SIGKILL."""
from __future__ import annotations

import json
import logging
import os
import queue
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import h5py
import hdf5plugin  # noqa: F401  (registers the filters h5py reads with)
import numpy as np
import pytest
from hidra_eiger.sim.compress import bslz4, bslz4_hdf5, lz4_block, lz4_hdf5
from hidra_eiger.sim.frames import FrameGenerator
from test_series_rules import SeriesRules, frames_of

from hidra_core import FRAME, SERIES_END, SERIES_START
from hidra_hdf5 import SeriesRefused
from hidra_hdf5.writer import Hdf5Writer, Hdf5WriterConfig

C = SeriesRules
ENCODINGS: dict[str, tuple[str, bool, Callable[[np.ndarray], bytes]]] = {
    "raw": ("none", False, lambda f: f.tobytes()),
    "bslz4-headerless": ("bslz4", False, bslz4),
    "bslz4-12-byte-header": ("bslz4", True, bslz4_hdf5),
    "lz4-bare-block": ("lz4", False, lz4_block),
    "lz4-hdf5-framed": ("lz4", True, lz4_hdf5),
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    return path


def make(root: Path, **options: Any) -> Hdf5Writer:
    return Hdf5Writer(Hdf5WriterConfig(**options), target=str(root))


def commit(writer: Hdf5Writer, handles: list[Any]) -> None:
    assert writer.commit_each(handles) == [None] * len(handles)


@pytest.mark.parametrize("dtype", ["<u2", "<u4"])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("channels", [("data",), ("threshold_1", "threshold_2")])
def test_every_encoding_reads_back_identical_with_h5py_and_hdf5plugin(root: Path, dtype: str, encoding: str,
                                                                     channels: tuple[str, ...]) -> None:
    compression, framed, encode = ENCODINGS[encoding]
    generator = FrameGenerator((40, 56), dtype, seed=11)
    writer = make(root)
    handles = [C.send(writer, C.item(root, SERIES_START, "s", C.start_meta(channels=channels)))]
    for n in range(5):
        for c in range(len(channels)):
            frame = generator.frame(n, c)
            meta = C.frame_meta(n, frame, compression, framed, channel_index=c)
            handles.append(C.send(writer, C.item(root, FRAME, "s", meta), encode(frame)))
    handles.append(C.send(writer, C.item(root, SERIES_END, "s", C.end_meta(5))))
    commit(writer, handles)
    with h5py.File(root / "s.h5", "r") as f:
        data = f["entry/data/data"]
        stored = data[()]
        assert data.chunks == ((1, 40, 56) if len(channels) == 1 else (1, 1, 40, 56))
        assert data.compression_opts is None or compression != "none"
    expected = np.stack([np.stack([generator.frame(n, c) for c in range(len(channels))]) for n in range(5)])
    np.testing.assert_array_equal(stored, expected if len(channels) > 1 else expected[:, 0])
    assert stored.dtype == np.dtype(dtype)


def test_compressed_frames_are_stored_as_sent_never_recompressed(root: Path) -> None:
    frame = frames_of(1, dtype="<u4")[0]
    blob = bslz4_hdf5(frame)
    writer = make(root)
    commit(writer, [C.send(writer, C.item(root, SERIES_START, "s", C.start_meta())),
                    C.send(writer, C.item(root, FRAME, "s", C.frame_meta(0, frame, "bslz4", True)), blob),
                    C.send(writer, C.item(root, SERIES_END, "s", C.end_meta(1)))])
    with h5py.File(root / "s.h5", "r") as f:
        data = f["entry/data/data"]
        assert data.id.read_direct_chunk((0, 0, 0)) == (0, blob)
        assert 32008 in data._filters or "32008" in data._filters


def test_header_end_facts_and_blobs_are_stored(root: Path) -> None:
    mask = (np.arange(48 * 64).reshape(48, 64) % 7 == 0).astype("<u4")
    flat = np.linspace(0.9, 1.1, 48 * 64, dtype="<f4").reshape(48, 64)
    payload = flat.tobytes() + mask.tobytes()
    blobs = [{"name": "flatfield", "dtype": "<f4", "shape": [48, 64], "offset": 0, "size": flat.nbytes},
             {"name": "pixel_mask/threshold_1", "dtype": "<u4", "shape": [48, 64], "offset": flat.nbytes,
              "size": mask.nbytes}]
    meta = C.start_meta(blobs=blobs)
    writer = make(root)
    frame = frames_of(1)[0]
    commit(writer, [C.send(writer, C.item(root, SERIES_START, "s", meta, "run/a"), payload),
                    C.send(writer, C.item(root, FRAME, "s", C.frame_meta(0, frame), "run/a"), frame.tobytes()),
                    C.send(writer, C.item(root, SERIES_END, "s", dict(C.end_meta(3), missing=2), "run/a"))])
    with h5py.File(root / "run/a/s.h5", "r") as f:
        detector = f["entry/instrument/detector"]
        np.testing.assert_array_equal(detector["flatfield"][()], flat)
        np.testing.assert_array_equal(detector["pixel_mask/threshold_1"][()], mask)
        assert detector.attrs["count_time"] == 0.001
        assert json.loads(detector.attrs["goniometer"]) == {"omega": {"start": 0.0}}
        assert detector.attrs["series_unique_id"] == "uid-1"
        assert json.loads(f["entry"].attrs["header"]) == meta
        assert [f["entry"].attrs[k] for k in ("frames", "missing", "stored", "aborted")] == [3, 2, 1, 0]


def test_aborted_series_reason_is_recorded(root: Path) -> None:
    writer = make(root)
    SeriesRules().run_series(writer, root, frames_of(2), aborted=True)
    with h5py.File(root / "series_1.aborted.h5", "r") as f:
        assert f["entry"].attrs["aborted"] == 1
        assert f["entry"].attrs["reason"] == "source closed"


@pytest.mark.parametrize(("existing", "kept"), [("backup", True), ("overwrite", False)])
def test_a_taken_final_name_follows_existing(root: Path, existing: str, kept: bool) -> None:
    (root / "series_1.h5").write_bytes(b"earlier")
    SeriesRules().run_series(make(root, existing=existing), root, frames_of(2))
    assert ((root / "series_1.h5.~1~").exists()) is kept
    assert h5py.is_hdf5(root / "series_1.h5")


def test_new_series_of_the_same_name_keeps_the_unfinished_one_as_aborted(root: Path) -> None:
    writer = make(root)
    frames = frames_of(3)
    commit(writer, [C.send(writer, C.item(root, SERIES_START, "s", C.start_meta(uid="a"))),
                    C.send(writer, C.item(root, FRAME, "s", C.frame_meta(0, frames[0], uid="a")), frames[0].tobytes()),
                    C.send(writer, C.item(root, SERIES_START, "s", C.start_meta(uid="b"))),
                    C.send(writer, C.item(root, FRAME, "s", C.frame_meta(0, frames[1], uid="b")), frames[1].tobytes()),
                    C.send(writer, C.item(root, SERIES_END, "s", C.end_meta(1, uid="b")))])
    with h5py.File(root / "s.aborted.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][0], frames[0])
    with h5py.File(root / "s.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][0], frames[1])


def test_frame_resent_after_its_series_was_published_is_confirmed_or_refused(root: Path) -> None:
    frames = frames_of(3)
    SeriesRules().run_series(make(root), root, frames[:2])
    writer = make(root)  # a restart between the rename and the confirmation: frames and end come again
    series = SeriesRules.series
    commit(writer, [C.send(writer, C.item(root, FRAME, series, C.frame_meta(1, frames[1])), frames[1].tobytes()),
                    C.send(writer, C.item(root, SERIES_END, series, C.end_meta(2)))])
    with pytest.raises(SeriesRefused, match="a published file is not changed"):
        C.send(writer, C.item(root, FRAME, series, C.frame_meta(2, frames[2])), frames[2].tobytes())
    with h5py.File(root / f"{series}.h5", "r") as f:
        assert f["entry/data/data"].shape[0] == 2


@pytest.mark.parametrize(("change", "message"), [
    ({"dtype": "<c8"}, "dtype"), ({"shape": [48]}, "shape"), ({"compression": "zstd"}, "compression"),
    ({"image_id": -1}, "image_id"), ({"channel_index": 3}, "channel_index"), ({"hdf5_framed": True}, "hdf5_framed"),
])
def test_hostile_frame_metadata_is_refused_with_a_clear_error(root: Path, change: dict[str, Any],
                                                               message: str) -> None:
    frame = frames_of(1)[0]
    writer = make(root)
    commit(writer, [C.send(writer, C.item(root, SERIES_START, "s", C.start_meta()))])
    meta = dict(C.frame_meta(0, frame, "bslz4" if "hdf5_framed" in change else "none"), **change)
    with pytest.raises(SeriesRefused, match=message):
        C.send(writer, C.item(root, FRAME, "s", meta), bslz4(frame) if "hdf5_framed" in change else frame.tobytes())


def test_receiver_sigkilled_mid_series_loses_no_confirmed_frame_and_duplicates_none(
        root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hidra_hdf5")
    count = 400
    generator = FrameGenerator((64, 80), "<u2", seed=3)
    for round_ in range(3):
        series_root = root / f"r{round_}"
        series_root.mkdir()
        confirmed = _run_and_kill(series_root, random.Random(round_).randrange(4, 300))
        writer = make(series_root)
        handles = []
        for n in range(max(0, confirmed - 6), count):  # re-sends a few confirmed ones too, as a sender may
            frame = generator.frame(n)
            handles.append(C.send(writer, C.item(series_root, FRAME, "s", C.frame_meta(n, frame, "bslz4")),
                                  bslz4(frame)))
        handles.append(C.send(writer, C.item(series_root, SERIES_END, "s", C.end_meta(count))))
        commit(writer, handles)
        with h5py.File(series_root / "s.h5", "r") as f:
            data = f["entry/data/data"]
            assert data.shape[0] == count and data.id.get_num_chunks() == count
            for n in range(count):
                np.testing.assert_array_equal(data[n], generator.frame(n), err_msg=f"frame {n}")
        assert not list((series_root / ".hidra-partial" / "hdf5").iterdir())
    assert caplog.text.count("rebuilding it from its chunks") == 3, "the killed writer's files needed no recovery?"


def _child(root: Path, count: int, end: bool, die_at: int = 0) -> subprocess.Popen[str]:
    here = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(here / "hdf5_kill_child.py"), str(root), str(count),
                             "end" if end else "-", str(die_at)], stdout=subprocess.PIPE, text=True, env=env)


def _run_and_kill(root: Path, after: int) -> int:
    """Run the child writer, SIGKILL it once it confirmed ``after`` frames (it goes on writing meanwhile)."""
    child = _child(root, 400, end=False)
    confirmed = -1
    try:
        assert child.stdout is not None
        for line in child.stdout:
            confirmed = int(line)
            if confirmed >= after:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert confirmed >= after, "the child ended before it was killed"
    return confirmed + 1


def test_series_of_a_killed_receiver_without_end_is_published_as_aborted_after_abandon_after_s(root: Path) -> None:
    confirmed = _run_and_kill(root, 40)
    (temp,) = (root / ".hidra-partial" / "hdf5").iterdir()
    old = temp.stat().st_mtime - 7200
    os.utime(temp, (old, old))
    writer = make(root, abandon_after_s=3600)
    assert writer.cleanup(before=old + 3599) == 0  # not yet abandoned: untouched for less than an hour
    assert writer.cleanup(before=old + 3601) == 1
    generator = FrameGenerator((64, 80), "<u2", seed=3)
    with h5py.File(root / "s.aborted.h5", "r") as f:
        data = f["entry/data/data"]
        assert data.shape[0] >= confirmed
        for n in range(confirmed):
            np.testing.assert_array_equal(data[n], generator.frame(n))
        assert f["entry"].attrs["reason"] == "abandoned: no series_end came"
    assert not list((root / ".hidra-partial" / "hdf5").iterdir())


def test_commits_in_their_own_thread_while_frames_arrive_store_every_frame(root: Path) -> None:
    frames = frames_of(60, dtype="<u4")
    writer = make(root)
    batches: queue.Queue[list[Any] | None] = queue.Queue()
    results: list[list[BaseException | None]] = []

    def committer() -> None:
        while (batch := batches.get()) is not None:
            results.append(writer.commit_each(batch))

    thread = threading.Thread(target=committer)
    thread.start()
    try:
        batch = [C.send(writer, C.item(root, SERIES_START, "s", C.start_meta()))]
        for n, frame in enumerate(frames):
            item = C.item(root, FRAME, "s", C.frame_meta(n, frame, "bslz4", True))
            handle = writer.open(item)
            blob = bslz4_hdf5(frame)
            for piece in (bytearray(blob[:100]), memoryview(blob)[100:5000], blob[5000:]):
                writer.write(handle, piece)
            writer.close(handle)
            batch.append(handle)
            if len(batch) == 3:
                batches.put(batch)
                batch = []
        batch.append(C.send(writer, C.item(root, SERIES_END, "s", C.end_meta(len(frames)))))
        batches.put(batch)
    finally:
        batches.put(None)
        thread.join()
    writer.shutdown()
    assert all(error is None for result in results for error in result)
    with h5py.File(root / "s.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], np.stack(frames))


def test_unreadable_leftover_is_moved_aside_and_a_new_start_begins_afresh(root: Path) -> None:
    frames = frames_of(2)
    writer = make(root)
    commit(writer, [C.send(writer, C.item(root, SERIES_START, "s", C.start_meta()))])
    writer.shutdown()
    (temp,) = (root / ".hidra-partial" / "hdf5").glob("*.h5")
    temp.write_bytes(b"not HDF5 at all")
    writer = make(root)
    with pytest.raises(SeriesRefused, match="cannot be read"):
        C.send(writer, C.item(root, FRAME, "s", C.frame_meta(0, frames[0])), frames[0].tobytes())
    (aside,) = (root / ".hidra-partial" / "hdf5").glob("*.unreadable-*")
    assert aside.read_bytes() == b"not HDF5 at all"
    temp.write_bytes(b"garbage again")
    SeriesRules().run_series(writer, root, frames, series="s")
    with h5py.File(root / "s.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], np.stack(frames))
    assert len(list((root / ".hidra-partial" / "hdf5").glob("*.unreadable-*"))) == 2


def test_stale_frame_and_end_of_an_earlier_series_of_the_same_name_are_refused(root: Path) -> None:
    frames = frames_of(2)
    writer = make(root)
    commit(writer, [C.send(writer, C.item(root, SERIES_START, "s", C.start_meta(series_id=2, uid="b"))),
                    C.send(writer, C.item(root, FRAME, "s", C.frame_meta(0, frames[0], series_id=2, uid="b")),
                           frames[0].tobytes())])
    with pytest.raises(SeriesRefused, match="belongs to series 1:a"):
        C.send(writer, C.item(root, FRAME, "s", C.frame_meta(1, frames[1], series_id=1, uid="a")),
               frames[1].tobytes())
    with pytest.raises(SeriesRefused, match="belongs to series 1:a"):
        C.send(writer, C.item(root, SERIES_END, "s", C.end_meta(2, series_id=1, uid="a")))
    end = writer.open(C.item(root, SERIES_END, "s", C.end_meta(1, series_id=2, uid="b")))
    writer.close(end)  # NOTE: no write() at all for an empty message
    commit(writer, [end])
    with h5py.File(root / "s.h5", "r") as f:
        assert f["entry/data/data"].shape[0] == 1


@pytest.mark.parametrize("die_at", range(1, 13))
def test_receiver_killed_at_any_file_open_or_rename_continues_the_series(root: Path, die_at: int) -> None:
    """The child dies right after the N-th HDF5 open or rename of a 6-frame series with its end (start,
    first frame, resume, end: every state a file can be left in); a new writer gets everything again."""
    child = _child(root, 6, end=True, die_at=die_at)
    output, _ = child.communicate()
    if child.returncode == 0:
        pytest.skip(f"the series makes fewer than {die_at} opens and renames")
    assert child.returncode == -signal.SIGKILL, output
    SeriesRules().run_series(make(root), root, [FrameGenerator((64, 80), "<u2", seed=3).frame(n)
                                                         for n in range(6)], encode=bslz4, compression="bslz4",
                                      series="s")
    generator = FrameGenerator((64, 80), "<u2", seed=3)
    with h5py.File(root / "s.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], np.stack([generator.frame(n) for n in range(6)]))
    assert not list((root / ".hidra-partial" / "hdf5").glob("*unreadable*"))
