"""Stream V1 ("legacy") multipart messages: ``dheader-1.0`` at each detail, ``dimage-1.0``, ``dseries_end-1.0``."""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from hidra_eiger.sim.series import Series, v1_encoding

log = logging.getLogger(__name__)

__all__ = ["end_parts", "header_parts", "image_parts"]


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def _xy(series: Series) -> list[int]:
    # NOTE: V1 shapes are [x, y], fastest dimension first; numpy's is (y, x)
    y, x = series.generator.shape
    return [x, y]


def _tables(series: Series) -> list[bytes]:
    """The three ``all``-detail parts pairs: flatfield, pixel mask, count-rate table."""
    y, x = series.generator.shape
    flat = np.ones((y, x), dtype="<f4")
    mask = np.zeros((y, x), dtype="<u4")
    mask[:, x // 2] = 1  # a dead column, as on a real module gap
    rate = np.stack([np.arange(0, 1000, dtype="<f4"), np.arange(0, 1000, dtype="<f4") * 1.01])
    return [
        _json({"htype": "dflatfield-1.0", "shape": [x, y], "type": "float32"}), flat.tobytes(),
        _json({"htype": "dpixelmask-1.0", "shape": [x, y], "type": "uint32"}), mask.tobytes(),
        _json({"htype": "dcountrate_table-1.0", "shape": list(rate.shape[::-1]), "type": "float32"}),
        rate.tobytes(),
    ]


def header_parts(series: Series) -> list[bytes]:
    parts = [_json({"htype": "dheader-1.0", "series": series.series_id, "header_detail": series.header_detail})]
    if series.header_detail in ("basic", "all"):
        parts.append(_json(series.detector))
    if series.header_detail == "all":
        parts += _tables(series)
    if series.header_appendix:
        parts.append(series.header_appendix.encode())
    return parts


def image_parts(series: Series, index: int) -> list[bytes]:
    blob = series.encode(index, 0)
    bits = int(series.detector["bit_depth_image"])
    start, stop, real = series.times_ns(index)
    parts = [
        _json({"htype": "dimage-1.0", "series": series.series_id, "frame": index,
               "hash": series.md5(index, 0)}),
        _json({"htype": "dimage_d-1.0", "shape": _xy(series), "type": f"uint{bits}",
               "encoding": v1_encoding(series.compression, bits), "size": len(blob)}),
        blob,
        _json({"htype": "dconfig-1.0", "start_time": start, "stop_time": stop, "real_time": real}),
    ]
    if series.image_appendix:
        parts.append(series.image_appendix.encode())
    return parts


def end_parts(series: Series) -> list[bytes]:
    return [_json({"htype": "dseries_end-1.0", "series": series.series_id})]
