"""One series' HDF5 file while it is written: header, frames as direct chunk writes, end facts, recovery.

Crash safety rests on HDF5's single-writer/multiple-reader mode (SWMR): once it has frames, the file is only
ever opened for writing directly in SWMR mode (``libver="latest"``), where the library orders its metadata writes
such that the file on disk is readable at any moment, and after ``flush`` + ``fsync`` every chunk written so far
is in its index. A file left by a killed process opens read-only in SWMR mode; ``recover`` copies its header and
every chunk (raw, ``read_direct_chunk``) into a fresh file, which replaces it. A plain write open would leave a
file that neither mode can open after a kill, so the header-only file (``series_start`` up to the first frame)
is never opened for writing: it is built, and later changed, on a copy that is fsynced and renamed over it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Callable, Mapping

import h5py
import numpy as np

from hidra_hdf5.framing import FrameSpec, SeriesRefused, chunk_of, filter_options

__all__ = ["END_DEFAULTS", "SeriesFile", "header_blobs", "identity_of", "recover", "write_header"]

log = logging.getLogger(__name__)

DATA = "entry/data/data"
DETECTOR = "entry/instrument/detector"
#: the series_end facts, as attributes of /entry; written at the start with "no end seen" values, because SWMR
#: mode may change existing attributes but not create new ones
END_DEFAULTS: dict[str, Any] = {"frames": np.int64(-1), "missing": np.int64(-1), "stored": np.int64(-1),
                                "aborted": np.int8(0), "reason": ""}


def _attr_value(value: Any) -> Any:
    """A JSON value as an HDF5 attribute: scalars as they are, anything else as JSON text."""
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def header_blobs(meta: Mapping[str, Any], payload: bytes) -> dict[str, np.ndarray]:
    """The header's blobs (flatfield, pixel mask, ...) as arrays, by name; ``SeriesRefused`` if one is bad."""
    blobs = meta.get("blobs") or []
    if not isinstance(blobs, list):
        raise SeriesRefused(f"series_start metadata 'blobs' must be a list, got {type(blobs).__name__}")
    out: dict[str, np.ndarray] = {}
    for blob in blobs:
        try:
            name, offset, size = blob["name"], int(blob["offset"]), int(blob["size"])
            dtype, shape = np.dtype(blob["dtype"]), tuple(int(n) for n in blob["shape"])
            parts = name.split("/")
            if any(p in ("", ".", "..") for p in parts) or offset < 0 or offset + size > len(payload):
                raise ValueError("name or offset/size out of range")
            out[name] = np.frombuffer(payload, dtype, count=size // dtype.itemsize, offset=offset).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise SeriesRefused(f"series_start blob {blob!r} does not describe its part of the payload"
                                f" ({len(payload)} bytes): {exc}") from None
    return out


def write_header(path: str, series: str, final: str, meta: Mapping[str, Any], payload: bytes) -> None:
    """Create the header-only file of a series at ``path`` (replacing a leftover) and close it."""
    blobs = header_blobs(meta, payload)
    channels = meta.get("channels") or ["data"]
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise SeriesRefused(f"series_start metadata 'channels' must be a list of names, got {channels!r}")
    # NOTE: built aside and renamed, so that a kill meanwhile never leaves a broken file under the series' name
    fresh = path + ".new"
    _write_header(fresh, series, final, meta, blobs, channels)
    _fsync_path(fresh)
    os.replace(fresh, path)
    _fsync_path(os.path.dirname(path))


def _write_header(path: str, series: str, final: str, meta: Mapping[str, Any], blobs: dict[str, np.ndarray],
                  channels: list[str]) -> None:
    with h5py.File(path, "w", libver="latest") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["series"] = series
        entry.attrs["hidra_final"] = final
        entry.attrs["header"] = json.dumps(dict(meta))
        entry.attrs["channels"] = json.dumps(channels)
        entry.attrs["identity"] = identity_of(meta)
        for key, value in END_DEFAULTS.items():
            entry.attrs[key] = value
        entry.create_group("data").attrs["NX_class"] = "NXdata"
        detector = f.create_group(DETECTOR)
        detector.attrs["NX_class"] = "NXdetector"
        for key in ("format", "series_id", "series_unique_id", "header_detail"):
            detector.attrs[key] = _attr_value(meta.get(key))
        config = meta.get("config") or {}
        for key, value in (config.items() if isinstance(config, dict) else ()):
            detector.attrs[str(key)] = _attr_value(value)
        for name, array in blobs.items():
            detector.create_dataset(name, data=array)


def identity_of(meta: Mapping[str, Any]) -> str:
    """What tells two series of the same name apart: the detector's series id and unique id."""
    return f"{meta.get('series_id')}:{meta.get('series_unique_id')}"


class SeriesFile:
    """An open series file (``h5py.File``) and an fd on it that stays valid across close and rename, for fsync."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file: h5py.File | None = None
        self.sync_fd = -1
        self.data: h5py.Dataset | None = None
        self._stale_fds: list[int] = []
        self._scratch = bytearray()  # where frames get their filter framing (see chunk_of)
        self._extent = 0
        self._form: tuple[tuple[int, ...], Any, str] = ((), None, "")
        self._open()

    def _open(self) -> None:
        # NOTE: a series file is only ever opened for writing in SWMR mode, which a kill leaves readable. The
        # header-only file (no frames yet) is read here and changed only on copies (_edit_copy).
        with h5py.File(self.path, "r", libver="latest") as f:
            entry = f["entry"]
            self.series = str(entry.attrs["series"])
            self.final = str(entry.attrs["hidra_final"])
            self.identity = str(entry.attrs["identity"])
            self.channels: list[str] = json.loads(entry.attrs["channels"])
            has_data = DATA in f
        self.sync_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        if has_data:
            self.file = _open_swmr_write(self.path)
            self.data = data = self.file[DATA]
            # NOTE: kept here rather than asked of HDF5 for every frame (each ask is a library call under its lock)
            self._extent = data.shape[0]
            self._form = (tuple(data.shape[-2:]), data.dtype, str(data.attrs["compression"]))

    def has_chunk(self, spec: FrameSpec) -> bool:
        data = self.data
        if data is None or spec.image_id >= self._extent:
            return False
        return data.id.get_chunk_info_by_coord(self._offset(spec)).byte_offset is not None

    def write_frame(self, spec: FrameSpec, payload: Any) -> bool:
        """Store the frame's chunk; False (nothing written) when its index already holds one."""
        if not 0 <= spec.channel_index < len(self.channels):
            raise SeriesRefused(f"frame {spec.image_id}: channel_index {spec.channel_index} is not one of the"
                                f" series' {len(self.channels)} channels {self.channels}")
        chunk = chunk_of(spec, payload, self._scratch)
        data = self.data if self.data is not None else self._begin_data(spec)
        self._check_form(spec)
        if self.has_chunk(spec):
            return False
        if spec.image_id >= self._extent:
            data.resize(spec.image_id + 1, axis=0)
            self._extent = spec.image_id + 1
        data.id.write_direct_chunk(self._offset(spec), chunk)
        return True

    def _offset(self, spec: FrameSpec) -> tuple[int, ...]:
        if len(self.channels) == 1:
            return (spec.image_id, 0, 0)
        return (spec.image_id, spec.channel_index, 0, 0)

    def _check_form(self, spec: FrameSpec) -> None:
        shape, dtype, compression = self._form
        if shape != tuple(spec.shape) or dtype != spec.dtype or compression != spec.compression:
            raise SeriesRefused(f"frame {spec.image_id} ({list(spec.shape)} {spec.dtype.str} {spec.compression})"
                                f" differs from the series' frames ({list(shape)} {dtype.str} {compression})")

    def _begin_data(self, spec: FrameSpec) -> h5py.Dataset:
        """Create the frame dataset (on a copy of the header-only file); from now on the file is written in SWMR."""
        lead = (0,) if len(self.channels) == 1 else (0, len(self.channels))

        def create(f: h5py.File) -> None:
            data = f.create_dataset(DATA, shape=(*lead, *spec.shape), maxshape=(None, *lead[1:], *spec.shape),
                                    chunks=(1,) * len(lead) + spec.shape, dtype=spec.dtype,
                                    **filter_options(spec.compression))
            data.attrs["compression"] = spec.compression

        self._edit_copy(create)
        assert self.data is not None
        return self.data

    def _edit_copy(self, edit: Callable[[h5py.File], None]) -> None:
        """Change the header-only file on a copy that is made durable and renamed over it."""
        assert self.file is None
        # NOTE: the old fd stays open until release(): the commit thread may be fsyncing it right now
        self._stale_fds.append(self.sync_fd)
        self.sync_fd = -1
        fresh = self.path + ".new"
        shutil.copyfile(self.path, fresh)
        with h5py.File(fresh, "r+", libver="latest") as f:
            edit(f)
        _fsync_path(fresh)
        os.replace(fresh, self.path)
        _fsync_path(os.path.dirname(self.path))
        self._open()

    def set_end(self, meta: Mapping[str, Any]) -> None:
        """Record the series_end facts in the attributes made for them at the start."""
        stored = 0 if self.data is None else self.data.id.get_num_chunks()
        facts = {"frames": np.int64(_count(meta, "frames")), "missing": np.int64(_count(meta, "missing")),
                 "stored": np.int64(stored), "aborted": np.int8(bool(meta.get("aborted"))),
                 "reason": str(meta.get("reason") or "")}

        def record(f: h5py.File) -> None:
            for key, value in facts.items():
                f["entry"].attrs.modify(key, value)

        if self.file is None:
            self._edit_copy(record)
        else:
            record(self.file)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def release(self) -> None:
        """Close the file and the fsync fd (after the end's commit, or at shutdown)."""
        self.close()
        for fd in (*self._stale_fds, self.sync_fd):
            if fd >= 0:
                os.close(fd)
        self._stale_fds = []
        self.sync_fd = -1


def _open_swmr_write(path: str) -> h5py.File:
    """Open an existing file for writing directly in SWMR mode (h5py opens "r+" files in plain mode first)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE, fapl=fapl)
    return h5py.File(fid)


def recover(path: str) -> int:
    """Rebuild the file a killed writer left at ``path`` (open for writing in SWMR mode); return its chunks.

    Everything but the frame dataset is copied object by object, the frames chunk by chunk as stored; the copy
    replaces ``path`` only once it is complete and durable.
    """
    fresh = path + ".new"
    with h5py.File(path, "r", libver="latest", swmr=True) as src, h5py.File(fresh, "w", libver="latest") as dst:
        _copy_attrs(src, dst)
        _copy_except(src["entry"], dst.create_group("entry"), DATA)
        count = _copy_chunks(src.get(DATA), dst)
    _fsync_path(fresh)
    os.replace(fresh, path)
    _fsync_path(os.path.dirname(path))
    return count


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value


def _copy_except(src: h5py.Group, dst: h5py.Group, skip: str) -> None:
    _copy_attrs(src, dst)
    for name, obj in src.items():
        if obj.name.lstrip("/") == skip:
            continue
        if isinstance(obj, h5py.Group) and skip.startswith(obj.name.lstrip("/") + "/"):
            _copy_except(obj, dst.create_group(name), skip)
        else:
            src.copy(obj, dst, name)


def _copy_chunks(src: h5py.Dataset | None, dst: h5py.File) -> int:
    if src is None:
        return 0
    compression = str(src.attrs["compression"])
    data = dst.create_dataset(DATA, shape=src.shape, maxshape=src.maxshape, chunks=src.chunks, dtype=src.dtype,
                              **filter_options(compression))
    data.attrs["compression"] = compression
    count = src.id.get_num_chunks()
    for n in range(count):
        offset = src.id.get_chunk_info(n).chunk_offset
        mask, chunk = src.id.read_direct_chunk(offset)
        data.id.write_direct_chunk(offset, chunk, mask)
    return count


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _count(meta: Mapping[str, Any], key: str) -> int:
    value = meta.get(key, -1)
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
