"""Stream V2: one CBOR map per message (``start``, ``image``, ``end``), first key ``type``, RFC 8746 tags."""
from __future__ import annotations

import logging
from typing import Any

import cbor2
import numpy as np

from hidra_eiger.sim.series import Series

log = logging.getLogger(__name__)

__all__ = ["TAG_COMPRESSED", "end_message", "image_message", "start_message"]

TAG_DATETIME = 0
TAG_MULTIDIM = 40  # [dims slowest first, contents], row-major
TAG_COMPRESSED = 56500  # DECTRIS: [algorithm, element size, bytes in HDF5-filter framing]
_TYPED = {"<u1": 68, "<u2": 69, "<u4": 70, "<f4": 85}  # RFC 8746 typed arrays, little-endian
_NS = 1_000_000_000


def _typed(payload: Any, dtype: str) -> cbor2.CBORTag:
    return cbor2.CBORTag(_TYPED[dtype], payload)


def _array(arr: np.ndarray) -> cbor2.CBORTag:
    dtype = arr.dtype.newbyteorder("<").str
    return cbor2.CBORTag(TAG_MULTIDIM, [list(arr.shape), _typed(arr.astype(dtype).tobytes(), dtype)])


def _frame(series: Series, index: int, channel: int) -> cbor2.CBORTag:
    bits = int(series.detector["bit_depth_image"])
    blob = series.encode(index, channel)
    compression = series.compression
    payload: bytes | cbor2.CBORTag = blob
    if compression != "none":
        payload = cbor2.CBORTag(TAG_COMPRESSED, [compression, bits // 8 if compression == "bslz4" else 0, blob])
    return cbor2.CBORTag(TAG_MULTIDIM, [list(series.generator.shape), _typed(payload, f"<u{bits // 8}")])


def _tables(series: Series) -> dict[str, Any]:
    """The ``all``-detail arrays; ``basic`` and ``none`` leave them out."""
    if series.header_detail != "all":
        return {}
    shape = series.generator.shape
    mask = np.zeros(shape, dtype="<u4")
    mask[:, shape[1] // 2] = 1
    return {
        "countrate_correction_lookup_table": _array(np.arange(0, 1000, dtype="<u4")),
        "flatfield": {c: _array(np.ones(shape, dtype="<f4")) for c in series.channels},
        "pixel_mask": {c: _array(mask) for c in series.channels},
    }


def start_message(series: Series) -> bytes:
    d = series.detector
    y, x = series.generator.shape
    msg: dict[str, Any] = {
        "type": "start", "arm_date": cbor2.CBORTag(TAG_DATETIME, series.arm_date.isoformat()),
        "beam_center_x": d["beam_center_x"], "beam_center_y": d["beam_center_y"], "channels": series.channels,
        "count_time": d["count_time"], "countrate_correction_enabled": d["countrate_correction_applied"],
        "detector_description": d["description"], "detector_serial_number": d["detector_number"],
        "detector_translation": [0.0, 0.0, d["detector_distance"]],
        "flatfield_enabled": d["flatfield_correction_applied"], "frame_time": d["frame_time"],
        "goniometer": {"omega": {"start": 0.0, "increment": 0.1}}, "image_dtype": f"uint{d['bit_depth_image']}",
        "image_size_x": x, "image_size_y": y, "incident_energy": d["photon_energy"],
        "incident_wavelength": d["wavelength"], "number_of_images": series.nimages_total,
        "pixel_mask_enabled": d["pixel_mask_applied"], "pixel_size_x": d["x_pixel_size"],
        "pixel_size_y": d["y_pixel_size"], "saturation_value": 2 ** int(d["bit_depth_image"]) - 2,
        "sensor_material": d["sensor_material"], "sensor_thickness": d["sensor_thickness"],
        "series_id": series.series_id, "series_unique_id": _unique(series),
        "threshold_energy": {c: d["threshold_energy"] * (1 + i) for i, c in enumerate(series.channels)},
        "user_data": series.header_appendix, "virtual_pixel_interpolation_enabled": False,
    }
    msg.update(_tables(series))
    return cbor2.dumps(msg)


def image_message(series: Series, index: int) -> bytes:
    start, stop, real = series.times_ns(index)
    return cbor2.dumps({
        "type": "image", "series_id": series.series_id, "series_unique_id": _unique(series), "image_id": index,
        "real_time": [real, _NS], "series_date": cbor2.CBORTag(TAG_DATETIME, series.arm_date.isoformat()),
        "start_time": [start, _NS], "stop_time": [stop, _NS], "user_data": series.image_appendix,
        "data": {c: _frame(series, index, i) for i, c in enumerate(series.channels)},
    })


def end_message(series: Series) -> bytes:
    return cbor2.dumps({"type": "end", "series_id": series.series_id, "series_unique_id": _unique(series)})


def _unique(series: Series) -> str:
    return f"{series.unique_id:016x}-{series.series_id}"
