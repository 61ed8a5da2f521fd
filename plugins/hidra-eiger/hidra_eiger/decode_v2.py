"""Stream V2 (eiger.md §5): one CBOR map per message, ``start`` / ``image`` / ``end``.

Images stay as the detector compressed them (tag 56500 bytes are already in HDF5-filter framing), as zero-copy
slices of the received message (``cbor_view``).
"""
from __future__ import annotations

import logging
from typing import Any

from hidra_eiger import cbor_view
from hidra_eiger.cbor_tags import Compressed, MultiDimArray, TypedArray
from hidra_eiger.messages import Blob, Buffer, ChannelFrame, DecodeError, End, Header, Image, Message

log = logging.getLogger(__name__)

__all__ = ["decode", "jsonable"]

_ALGORITHMS = ("bslz4", "lz4")
_TABLES = ("flatfield", "pixel_mask", "countrate_correction_lookup_table")


def jsonable(value: Any) -> Any:
    """``value`` with only JSON types (rationals stay ``[num, den]`` lists, date-times are ISO text already)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (bytes, memoryview)):
        return value.hex()
    return repr(value)


def _array_blob(name: str, value: MultiDimArray) -> Blob:
    contents = value.contents
    if not (value.row_major and isinstance(contents, TypedArray) and not isinstance(contents.data, Compressed)):
        raise DecodeError("malformed", f"start: {name} is not a row-major typed array")
    return Blob(name, contents.dtype, list(value.dims), contents.data)


def _start(msg: dict[str, Any], series: int, unique: str | None) -> Header:
    config: dict[str, Any] = {}
    blobs: list[Blob] = []
    for key, value in msg.items():
        if isinstance(value, MultiDimArray):
            blobs.append(_array_blob(key, value))
        elif isinstance(value, dict) and value and all(isinstance(v, MultiDimArray) for v in value.values()):
            blobs += [_array_blob(f"{key}/{channel}", v) for channel, v in value.items()]
        elif key != "type":
            config[key] = jsonable(value)
    channels = msg.get("channels")
    if not (isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)):
        raise DecodeError("malformed", f"start of series {series} has no list of channel names: {channels!r}")
    # NOTE: V2 does not send header_detail; "none" is "basic" there, so only the tables tell "all" from "basic"
    detail = "all" if any(k in msg for k in _TABLES) else "basic"
    return Header("v2", series, unique, detail, config, list(channels), blobs, config.get("user_data"))


def _channel(name: str, value: Any, ids: dict[str, Any]) -> ChannelFrame:
    if not isinstance(value, MultiDimArray) or not value.row_major or len(value.dims) != 2:
        raise DecodeError("malformed", f"image channel {name!r} is not a row-major 2-D array (tag 40)", **ids)
    typed = value.contents
    if not isinstance(typed, TypedArray):
        raise DecodeError("malformed", f"image channel {name!r} has no typed array (tags 64-87)", **ids)
    data = typed.data
    if isinstance(data, Compressed):
        if data.algorithm not in _ALGORITHMS:
            raise DecodeError("unknown_encoding", f"channel {name!r}: unknown tag 56500 algorithm "
                              f"{data.algorithm!r}", **ids)
        return ChannelFrame(name, data.data, list(value.dims), typed.dtype, data.algorithm, True,
                            f"cbor-56500-{data.algorithm}")
    return ChannelFrame(name, data, list(value.dims), typed.dtype, "none", False, f"cbor-{typed.tag}")


def _image(msg: dict[str, Any], series: int, unique: str | None) -> Image:
    image_id = msg.get("image_id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        raise DecodeError("malformed", f"image of series {series} has no integer image_id: {image_id!r}")
    ids: dict[str, Any] = {"series_id": series, "image_id": image_id}
    data = msg.get("data")
    if not isinstance(data, dict) or not data:
        raise DecodeError("malformed", "image has no data map {channel: array}", **ids)
    frames = [_channel(str(name), value, ids) for name, value in data.items()]
    times: dict[str, Any] = {k: jsonable(msg[k]) for k in ("start_time", "stop_time", "real_time") if k in msg}
    return Image(series, unique, image_id, frames, times, jsonable(msg.get("user_data")))


def decode(data: Buffer) -> Message:
    """One V2 message; ``DecodeError`` if it is not CBOR, not a map, or not of a known ``type``."""
    try:
        msg = cbor_view.loads(data)
    except ValueError as exc:
        raise DecodeError("malformed", f"not a Stream V1 JSON object, nor valid Stream V2 CBOR: {exc}") from None
    if not isinstance(msg, dict):
        raise DecodeError("malformed", f"CBOR message is a {type(msg).__name__}, not a map")
    kind = msg.get("type")
    series = msg.get("series_id")
    if kind not in ("start", "image", "end"):
        raise DecodeError("malformed", f"CBOR map of unknown type {kind!r}")
    if not isinstance(series, int) or isinstance(series, bool):
        raise DecodeError("malformed", f"CBOR {kind} message has no integer series_id: {series!r}")
    unique = msg.get("series_unique_id")
    unique = None if unique is None else str(unique)
    if kind == "image":
        return _image(msg, series, unique)
    if kind == "start":
        return _start(msg, series, unique)
    return End(series, unique)
