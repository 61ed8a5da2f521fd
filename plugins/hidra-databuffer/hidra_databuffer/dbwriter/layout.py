"""The two HDF5 layouts of databuffer.md §9, written from a §8 response.

Both: ``/general/{created,instrument,process,user}`` scalar byte strings, no attributes, contiguous uncompressed
datasets ``/data/<channel>/{data,pulse_id,is_data_present,global_date}``. Compact (``output_file_format`` absent or
``"compact"``): each channel's own events. Extended (any other value, null included): the sorted union of pulse
ids of all channels, zeros / false / ``""`` where a channel has no event.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["GENERAL_KEYS", "LayoutError", "RangeWriter", "is_compact", "write_layout"]

GENERAL_KEYS = ("created", "instrument", "process", "user")
_DTYPES = {"int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8", "uint8": "u1", "uint16": "u2",
           "uint32": "u4", "uint64": "u8", "float32": "f4", "float64": "f8", "bool": "?"}
_STR = h5py.string_dtype()
# NOTE: rows are converted and written in blocks of about this size, so a long image range never needs a second
# full-size copy next to the parsed response.
_BLOCK_BYTES = 64 << 20


class LayoutError(ValueError):
    """The response or parameters do not fit the layout; the text names the channel and what is wrong."""


@dataclass(frozen=True)
class _Channel:
    name: str
    dtype: np.dtype[Any]
    row_shape: tuple[int, ...]
    events: Sequence[dict[str, Any]]

    @property
    def pulse_ids(self) -> list[int]:
        return [int(ev["pulseId"]) for ev in self.events]


def is_compact(params: dict[str, Any]) -> bool:
    return params.get("output_file_format", "compact") == "compact"


def write_layout(h5: h5py.File, response: list[dict[str, Any]], params: dict[str, Any]) -> tuple[int, int]:
    """Fill an open, empty file; returns (channels written, data points written)."""
    _write_general(h5, params)
    channels = [ch for ch in (_channel(entry) for entry in response) if ch is not None]
    points = 0
    if is_compact(params):
        for ch in channels:
            _write_channel(h5, ch, ch.pulse_ids, list(ch.events))
            points += len(ch.events)
        return len(channels), points
    union = sorted({pid for ch in channels for pid in ch.pulse_ids})
    for ch in channels:
        by_pid = {int(ev["pulseId"]): ev for ev in ch.events}
        _write_channel(h5, ch, union, [by_pid.get(pid) for pid in union])
        points += len(by_pid)
    return len(channels), points


class RangeWriter:
    """The same layouts written part by part from the responses of consecutive, disjoint sub-ranges (ascending):
    datasets grow (chunked) as parts come, so memory holds one part. Names, dtypes, shapes and values equal a
    ``write_layout`` of the whole range's response: a channel's dtype and row shape come from ``configs[0]`` of the
    first part where it has events (else of the last part), as a whole-range answer lists them."""

    def __init__(self, h5: h5py.File, params: dict[str, Any]) -> None:
        _write_general(h5, params)
        self.h5, self.compact = h5, is_compact(params)
        self._sinks: list[_Sink] = []
        self.points = 0

    def add(self, response: list[dict[str, Any]]) -> None:
        while len(self._sinks) < len(response):
            self._sinks.append(_Sink(self.h5))
        entries = [(sink, _channel(entry, quiet=True)) for sink, entry in zip(self._sinks, response)]
        for sink, entry in zip(self._sinks, response):
            channel = entry.get("channel")
            sink.name = sink.name or str(channel.get("name") if isinstance(channel, dict) else channel)
        known = [(sink, ch) for sink, ch in entries if ch is not None]
        union = [] if self.compact else sorted({pid for _, ch in known for pid in ch.pulse_ids})
        before = self._union_so_far()
        for sink, ch in known:
            self.points += len(ch.events)
            if self.compact:
                sink.append(ch, ch.pulse_ids, list(ch.events))
            else:
                by_pid = {int(ev["pulseId"]): ev for ev in ch.events}
                sink.append(ch, union, [by_pid.get(pid) for pid in union], before)

    def _union_so_far(self) -> np.ndarray[Any, Any]:
        """The extended layout's pulse ids written by earlier parts (every started channel has them all)."""
        if self.compact:
            return np.empty(0, dtype="i8")
        started = next((sink.index["pulse_id"] for sink in self._sinks if sink.index), None)
        return np.empty(0, dtype="i8") if started is None else started[()]

    def finish(self) -> tuple[int, int]:
        """Create what no part had data for; returns (channels written, data points written)."""
        written = 0
        for sink in self._sinks:
            if sink.last is None:
                log.warning("channel %s: no configs in the response (unknown to the data API), skipped", sink.name)
                continue
            sink.close()
            written += 1
        return written, self.points


class _Sink:
    """One channel's growing datasets; ``data`` waits for the first events, which fix its dtype and row shape."""

    def __init__(self, h5: h5py.File) -> None:
        self.h5 = h5
        self.name = ""
        self.index: dict[str, h5py.Dataset] = {}
        self.data: h5py.Dataset | None = None
        self.last: _Channel | None = None  # NOTE: the latest part's view of the channel (configs[0])

    def append(self, ch: _Channel, pulse_ids: list[int], rows: list[dict[str, Any] | None],
               before: np.ndarray[Any, Any] | None = None) -> None:
        self.name, self.last = ch.name, ch
        if not self.index:
            self._start(ch, np.empty(0, dtype="i8") if before is None else before)
        n = len(self.index["pulse_id"])
        if self.data is None and ch.events:
            self.data = self._data(ch, n)
        dates = np.empty(len(rows), dtype=object)
        dates[:] = [str(ev.get("globalDate", "")) if ev is not None else "" for ev in rows]
        self._grow("pulse_id", np.asarray(pulse_ids, dtype="i8"))
        self._grow("is_data_present", np.asarray([ev is not None for ev in rows], dtype="?"))
        self._grow("global_date", dates)
        if self.data is not None:
            fixed = _Channel(ch.name, self.data.dtype, self.data.shape[1:], ch.events)
            self.data.resize(n + len(rows), axis=0)
            _fill(self.data, fixed, n, pulse_ids, rows)

    def _start(self, ch: _Channel, before: np.ndarray[Any, Any]) -> None:
        """Index datasets; a channel first seen after earlier parts gets their rows as missing ones."""
        group = self.h5.require_group(f"data/{ch.name}")
        for key, dtype, fill in (("pulse_id", "i8", before), ("is_data_present", "?", np.zeros(len(before), "?")),
                                 ("global_date", _STR, np.full(len(before), "", dtype=object))):
            self.index[key] = group.create_dataset(key, data=fill, dtype=dtype, maxshape=(None,),
                                                   chunks=(_chunk_rows(8),))

    def _data(self, ch: _Channel, rows: int) -> h5py.Dataset:
        group = self.h5[f"data/{ch.name}"]
        item = 16 if ch.dtype == _STR else ch.dtype.itemsize
        row_bytes = item * int(np.prod(ch.row_shape, dtype=np.int64))
        dset = group.create_dataset("data", shape=(rows, *ch.row_shape), dtype=ch.dtype,
                                    maxshape=(None, *ch.row_shape), chunks=(_chunk_rows(row_bytes), *ch.row_shape))
        if rows:  # NOTE: rows of earlier parts had no event: written as zeros or "", as write_layout does
            _fill(dset, _Channel(ch.name, ch.dtype, ch.row_shape, []), 0, [0] * rows, [None] * rows)
        return dset

    def _grow(self, key: str, values: np.ndarray[Any, Any]) -> None:
        dset = self.index[key]
        n = len(dset)
        dset.resize(n + len(values), axis=0)
        dset[n:] = values

    def close(self) -> None:
        if self.data is None and self.last is not None:
            self.data = self._data(self.last, len(self.index["pulse_id"]))


def _chunk_rows(row_bytes: int) -> int:
    return max(1, min(4096, (4 << 20) // max(1, row_bytes)))  # NOTE: ~4 MiB chunks: fewer, larger HDF5 writes


def _write_general(h5: h5py.File, params: dict[str, Any]) -> None:
    missing = [f"general/{key}" for key in GENERAL_KEYS if f"general/{key}" not in params]
    if missing:
        raise LayoutError(f"parameters lack {missing}; they have {sorted(params)}")
    for key in GENERAL_KEYS:
        h5.create_dataset(f"general/{key}", data=np.bytes_(str(params[f"general/{key}"]).encode("utf-8")))


def _channel(entry: dict[str, Any], quiet: bool = False) -> _Channel | None:
    channel = entry.get("channel")
    name = channel.get("name") if isinstance(channel, dict) else channel
    if not isinstance(name, str) or not name.strip("/"):
        raise LayoutError(f"response entry without a channel name: {channel!r}")
    configs = entry.get("configs") or []
    if not configs:
        if quiet:
            return None
        log.warning("channel %s: no configs in the response (unknown to the data API), skipped", name)
        return None
    config = configs[0]
    kind = str(config.get("type", "float64")).lower()
    if kind == "string":
        dtype: np.dtype[Any] = _STR
    elif kind in _DTYPES:
        dtype = np.dtype(_DTYPES[kind])
    else:
        raise LayoutError(f"channel {name}: unsupported type {kind!r}")
    shape = config.get("shape") or [1]
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise LayoutError(f"channel {name}: bad shape {shape!r}")
    return _Channel(name.strip("/"), dtype, tuple(reversed(shape)), entry.get("data") or [])


def _write_channel(h5: h5py.File, ch: _Channel, pulse_ids: list[int], rows: list[dict[str, Any] | None]) -> None:
    group = h5.require_group(f"data/{ch.name}")
    n = len(rows)
    group.create_dataset("pulse_id", data=np.asarray(pulse_ids, dtype="i8").reshape(n))
    group.create_dataset("is_data_present", data=np.asarray([ev is not None for ev in rows], dtype="?").reshape(n))
    dates = np.empty(n, dtype=object)
    dates[:] = [str(ev.get("globalDate", "")) if ev is not None else "" for ev in rows]
    group.create_dataset("global_date", data=dates, dtype=_STR)
    _fill(group.create_dataset("data", shape=(n, *ch.row_shape), dtype=ch.dtype), ch, 0, pulse_ids, rows)


def _fill(dset: h5py.Dataset, ch: _Channel, at: int, pulse_ids: list[int], rows: list[dict[str, Any] | None]) -> None:
    """``dset[at:at + len(rows)]`` from the rows, a block of about ``_BLOCK_BYTES`` at a time."""
    row_size = int(np.prod(ch.row_shape, dtype=np.int64))
    step = max(1, _BLOCK_BYTES // max(1, row_size * ch.dtype.itemsize))
    for start in range(0, len(rows), step):
        block = rows[start:start + step]
        runs = _runs(ch, block)
        if runs is None:
            dset[at + start:at + start + len(block)] = _block(ch, block, pulse_ids[start:start + step])
            continue
        for offset, array in runs:
            dset[at + start + offset:at + start + offset + len(array)] = array


def _runs(ch: _Channel, rows: list[dict[str, Any] | None]) -> list[tuple[int, np.ndarray[Any, Any]]] | None:
    """Every row's value as views of the buffers they lie in, (first row, rows) per run of rows adjacent in one
    buffer, when all rows have an array of the channel's dtype and shape (the binary answer's records): then they
    go to HDF5 without being copied into a block first. ``None``: take ``_block``."""
    count = int(np.prod(ch.row_shape, dtype=np.int64))
    runs: list[list[Any]] = []  # [first row index, first value, rows]
    for index, ev in enumerate(rows):
        value = ev.get("value") if ev is not None else None
        if ch.dtype == _STR or not isinstance(value, np.ndarray) or value.base is None or value.dtype != ch.dtype \
                or value.size != count or not value.flags.c_contiguous:
            return None
        if runs and value.base is runs[-1][1].base and _address(value) == \
                _address(runs[-1][1]) + runs[-1][2] * value.nbytes:
            runs[-1][2] += 1
        else:
            runs.append([index, value, 1])
    # NOTE: adjacent rows of one buffer: a strided view over them stays inside that buffer
    return [(first, np.lib.stride_tricks.as_strided(value, shape=(n, *ch.row_shape),
                                                    strides=(value.nbytes, *value.reshape(ch.row_shape).strides)))
            for first, value, n in runs]


def _address(array: np.ndarray[Any, Any]) -> int:
    return int(array.__array_interface__["data"][0])


def _block(ch: _Channel, rows: list[dict[str, Any] | None], pulse_ids: list[int]) -> np.ndarray[Any, Any]:
    present = [i for i, ev in enumerate(rows) if ev is not None]
    is_str = ch.dtype == _STR
    out = np.empty((len(rows), *ch.row_shape), dtype=object if is_str else ch.dtype)
    if len(present) < len(rows):
        out[...] = "" if is_str else 0
    if not present:
        return out
    values = [rows[i]["value"] for i in present]  # type: ignore[index]
    array: np.ndarray[Any, Any]
    try:
        if is_str:
            flat = [str(x) for v in values for x in (v if isinstance(v, list) else [v])]
            array = np.empty(len(flat), dtype=object)
            array[:] = flat
        else:
            array = np.asarray(values, dtype=ch.dtype)
        array = array.reshape((len(present), *ch.row_shape))
    except (ValueError, TypeError) as exc:
        raise LayoutError(f"channel {ch.name}: values of pulses {pulse_ids[present[0]]}..{pulse_ids[present[-1]]}"
                          f" do not fit type {ch.dtype} and shape {ch.row_shape[::-1]}: {exc}") from None
    if len(present) == len(rows):
        return array
    out[present] = array
    return out
