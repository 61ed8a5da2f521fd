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

__all__ = ["GENERAL_KEYS", "LayoutError", "is_compact", "write_layout"]

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


def _write_general(h5: h5py.File, params: dict[str, Any]) -> None:
    missing = [f"general/{key}" for key in GENERAL_KEYS if f"general/{key}" not in params]
    if missing:
        raise LayoutError(f"parameters lack {missing}; they have {sorted(params)}")
    for key in GENERAL_KEYS:
        h5.create_dataset(f"general/{key}", data=np.bytes_(str(params[f"general/{key}"]).encode("utf-8")))


def _channel(entry: dict[str, Any]) -> _Channel | None:
    channel = entry.get("channel")
    name = channel.get("name") if isinstance(channel, dict) else channel
    if not isinstance(name, str) or not name.strip("/"):
        raise LayoutError(f"response entry without a channel name: {channel!r}")
    configs = entry.get("configs") or []
    if not configs:
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
    dset = group.create_dataset("data", shape=(n, *ch.row_shape), dtype=ch.dtype)
    row_size = int(np.prod(ch.row_shape, dtype=np.int64))
    step = max(1, _BLOCK_BYTES // max(1, row_size * ch.dtype.itemsize))
    for start in range(0, n, step):
        block = rows[start:start + step]
        dset[start:start + len(block)] = _block(ch, block, pulse_ids[start:start + step])


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
