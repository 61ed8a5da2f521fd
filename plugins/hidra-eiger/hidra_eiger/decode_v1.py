"""Stream V1 (eiger.md §4): ``dheader-1.0`` / ``dimage-1.0`` / ``dseries_end-1.0`` multipart messages.

The image blob stays the buffer it arrived in (zero-copy); only the small JSON parts are parsed.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Sequence

from hidra_eiger.messages import Blob, Buffer, ChannelFrame, DecodeError, End, Header, Image, Message

log = logging.getLogger(__name__)

__all__ = ["decode", "parse_encoding"]

# NOTE: ``[bs<BITS>][[-]lz4][<|>]``; bitshuffle without LZ4 is allowed by the grammar but no detector sends it and
# no HDF5 filter framing covers it, so it counts as an unknown encoding
_ENCODING = re.compile(r"^(?:bs(?P<bits>8|16|32|64)-?(?P<bslz4>lz4)|(?P<lz4>lz4))?(?P<order>[<>]?)$")
_TYPES = {"uint8": "u1", "uint16": "u2", "uint32": "u4", "int8": "i1", "int16": "i2", "int32": "i4",
          "float32": "f4", "float64": "f8"}
# NOTE: lenient names: some simulators send ``flatfield-1.0`` for ``dflatfield-1.0``
_TABLES = {"flatfield": "flatfield", "pixelmask": "pixel_mask", "countrate_table": "countrate_table",
           "countrate": "countrate_table"}


def _json(part: Buffer, what: str, **ids: Any) -> dict[str, Any]:
    try:
        value = json.loads(bytes(part))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # NOTE: RecursionError: nested too deeply
        raise DecodeError("malformed", f"{what} is not JSON: {exc}", **ids) from None
    if not isinstance(value, dict):
        raise DecodeError("malformed", f"{what} is a JSON {type(value).__name__}, not an object", **ids)
    return value


def _int(head: dict[str, Any], key: str, what: str) -> int:
    value = head.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError("malformed", f"{what} has no integer {key!r}: {value!r}")
    return value


def parse_encoding(encoding: str) -> tuple[str, str]:
    """``(compression, byte order)`` of a V1 encoding text; raises ``DecodeError('unknown_encoding')``."""
    match = _ENCODING.match(encoding) if isinstance(encoding, str) else None
    if match is None:
        raise DecodeError("unknown_encoding", f"unknown encoding {encoding!r}")
    compression = "bslz4" if match["bslz4"] else "lz4" if match["lz4"] else "none"
    return compression, match["order"] or "<"


def _appendix(part: Buffer) -> Any:
    """An appendix as JSON when it is JSON, else as text (it is free-form, set by the user)."""
    raw = bytes(part)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return raw.decode("utf-8", "replace")


def _table(head: dict[str, Any], blob: Buffer) -> Blob | None:
    name = str(head.get("htype", "")).removeprefix("d").removesuffix("-1.0")
    if name not in _TABLES:
        return None
    kind = _TABLES[name]
    dtype = _TYPES.get(str(head.get("type")))
    shape = head.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
        raise DecodeError("malformed", f"{head.get('htype')} part has no valid type/shape: {head!r}")
    return Blob(kind, "<" + dtype, shape[::-1], blob)  # NOTE: V1 shapes are fastest first; numpy's slowest first


def _header(head: dict[str, Any], parts: Sequence[Buffer]) -> Header:
    series = _int(head, "series", "dheader-1.0")
    detail = head.get("header_detail")
    rest = list(parts[1:])
    config: dict[str, Any] = {}
    if detail in ("basic", "all"):
        if not rest:
            raise DecodeError("malformed", f"dheader-1.0 of series {series} at detail {detail} has no config part")
        config = _json(rest.pop(0), f"dheader-1.0 config part of series {series}")
    blobs: list[Blob] = []
    while len(rest) >= 2:
        try:
            table = _table(json.loads(bytes(rest[0])), rest[1])
        except (ValueError, AttributeError, RecursionError):
            table = None
        if table is None:
            break
        blobs.append(table)
        rest = rest[2:]
    user_data = _appendix(rest[-1]) if rest else None
    if len(rest) > 1:
        log.warning("series %d: dheader-1.0 has %d unknown parts; only the last is kept, as the appendix",
                    series, len(rest))
    return Header("v1", series, None, detail if isinstance(detail, str) else None, config, ["data"], blobs,
                  user_data)


def _frame(desc: dict[str, Any], blob: Buffer, ids: dict[str, Any]) -> ChannelFrame:
    try:
        compression, order = parse_encoding(desc.get("encoding"))  # type: ignore[arg-type]
    except DecodeError as err:
        raise DecodeError(err.kind, str(err), **ids) from None
    code = _TYPES.get(str(desc.get("type")))
    shape = desc.get("shape")
    if code is None or not isinstance(shape, list) or len(shape) != 2 or not all(
            isinstance(n, int) and n > 0 for n in shape):
        raise DecodeError("malformed", f"dimage_d-1.0 has no valid type/shape: {desc!r}", **ids)
    nbytes = memoryview(blob).nbytes
    if desc.get("size", nbytes) != nbytes:
        raise DecodeError("malformed", f"blob has {nbytes} bytes, dimage_d-1.0 says {desc.get('size')}", **ids)
    itemsize = int(code[1:])
    dtype = ("|" if itemsize == 1 else order) + code
    x, y = shape
    # NOTE: the 12-byte HDF5 bitshuffle header is there when its first 8 bytes (BE) are the raw byte count
    framed = compression == "bslz4" and nbytes >= 12 and int.from_bytes(bytes(blob[:8]), "big") == x * y * itemsize
    return ChannelFrame("data", blob, [y, x], dtype, compression, framed, str(desc["encoding"]))


def _image(head: dict[str, Any], parts: Sequence[Buffer]) -> Image:
    series, frame = _int(head, "series", "dimage-1.0"), _int(head, "frame", "dimage-1.0")
    ids: dict[str, Any] = {"series_id": series, "image_id": frame}
    if len(parts) < 3:
        raise DecodeError("malformed", f"truncated dimage-1.0: {len(parts)} parts, at least 3 needed", **ids)
    desc = _json(parts[1], "dimage_d-1.0 part", **ids)
    channel = _frame(desc, parts[2], ids)
    times: dict[str, Any] = {}
    rest = list(parts[3:])
    if rest and rest[0][:1] == b"{":
        dconfig = _json(rest[0], "dconfig-1.0 part", **ids)
        htype = dconfig.get("htype")
        if isinstance(htype, str) and htype.startswith("dconfig"):
            times = {k: dconfig[k] for k in ("start_time", "stop_time", "real_time") if k in dconfig}
            rest.pop(0)
    user_data = _appendix(rest[-1]) if rest else None
    md5 = head.get("hash") or ""
    return Image(series, None, frame, [channel], times, user_data, md5 if isinstance(md5, str) else "")


def decode(parts: Sequence[Buffer]) -> Message:
    """One V1 message; ``DecodeError`` if it is broken or of an unknown ``htype`` (the source skips it)."""
    head = _json(parts[0], "first part")
    htype = head.get("htype")
    if htype == "dimage-1.0":
        return _image(head, parts)
    if htype == "dheader-1.0":
        return _header(head, parts)
    if htype == "dseries_end-1.0":
        return End(_int(head, "series", "dseries_end-1.0"), None)
    if not isinstance(htype, str):
        raise DecodeError("malformed", f"first part has no htype: {bytes(parts[0])[:80]!r}")
    raise DecodeError("unknown_htype", f"skipping a message of unknown htype {htype!r}")
