"""One bsread message (its frames as buffers) to one pulse: main header, cached data header, value frames.

The message layout is databuffer.md §10. Values are not decompressed: a pulse's payload is the value frames as
received, and each is only checked to fit its channel's type and shape (``ChannelSpec.check``). A message that
cannot be a pulse raises ``DecodeError``; a single value that does not fit is dropped from its pulse and reported
in ``Pulse.bad`` (one misdescribed channel must not lose every other channel of the stream).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

from hidra_databuffer.values import COMPRESSIONS, ChannelSpec, decompress

__all__ = ["DataHeader", "DecodeError", "Decoder", "MainHeader", "Pulse", "parse_data_header", "parse_main_header"]

MAIN_HTYPES = ("bsr_m-1.0", "bsr_m-1.1")
DATA_HTYPES = ("bsr_d-1.0", "bsr_d-1.1")


class DecodeError(Exception):
    """A message that is no pulse; ``kind`` says which part failed (``truncated``, ``main_header``,
    ``data_header``)."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


@dataclass(frozen=True)
class MainHeader:
    pulse_id: int
    sec: int
    ns: int
    hash: str
    dh_compression: str


@dataclass(frozen=True)
class DataHeader:
    channels: tuple[ChannelSpec, ...]
    entries: tuple[dict[str, Any], ...]  # each channel's pulse-event entry, without the per-pulse fields
    ts_formats: tuple[str, ...]  # struct format of each channel's timestamp frame


@dataclass
class Pulse:
    header: MainHeader
    metadata: dict[str, Any]
    payload: Any  # one buffer: the value frames concatenated (a frame's own buffer when there is only one)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (channel, why) of values dropped


def _json_object(raw: Any, what: str) -> dict[str, Any]:
    try:
        value = json.loads(bytes(raw))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # NOTE: RecursionError: nested too deeply
        raise ValueError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is a JSON {type(value).__name__}, not an object")
    return value


def _integer(value: Any, what: str, below: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (below is not None and value >= below):
        limit = "" if below is None else f" below {below}"
        raise ValueError(f"{what} {value!r} is not a non-negative integer{limit}")
    return value


def parse_main_header(frame: memoryview) -> MainHeader:
    """The main header; ``DecodeError("main_header")`` naming what is wrong."""
    try:
        head = _json_object(frame, "the main header")
        if head.get("htype") not in MAIN_HTYPES:
            raise ValueError(f"htype {head.get('htype')!r} is not one of {', '.join(MAIN_HTYPES)}")
        stamp = head.get("global_timestamp")
        if not isinstance(stamp, dict):
            raise ValueError(f"global_timestamp {stamp!r} is not an object {{sec, ns}}")
        # NOTE: older senders name the seconds "epoch"
        sec = _integer(stamp.get("sec", stamp.get("epoch")), "global_timestamp sec")
        ns = _integer(stamp.get("ns", 0), "global_timestamp ns", 10**9)
        digest = head.get("hash")
        if not isinstance(digest, str) or not digest:
            raise ValueError(f"hash {digest!r} is not a non-empty string")
        dh = head.get("dh_compression") or "none"
        if dh not in COMPRESSIONS:
            raise ValueError(f"dh_compression {dh!r} is not one of {', '.join(COMPRESSIONS)}")
        return MainHeader(_integer(head.get("pulse_id"), "pulse_id"), sec, ns, digest, dh)
    except ValueError as exc:
        raise DecodeError("main_header", str(exc)) from None


def parse_data_header(frame: memoryview, dh_compression: str) -> DataHeader:
    """The data header (decompressed first if the main header says so); ``DecodeError("data_header")``."""
    try:
        head = _json_object(decompress(ChannelSpec("data header", "string", compression=dh_compression), frame),
                            "the data header")
        if head.get("htype") not in DATA_HTYPES:
            raise ValueError(f"htype {head.get('htype')!r} is not one of {', '.join(DATA_HTYPES)}")
        raw = head.get("channels")
        if not isinstance(raw, list):
            raise ValueError(f"channels {raw!r} is not a list")
        channels = tuple(ChannelSpec.from_entry(entry) for entry in raw)
        names = [c.name for c in channels]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"channel names appear more than once: {', '.join(twice)}")
    except ValueError as exc:
        raise DecodeError("data_header", str(exc)) from None
    return DataHeader(channels, tuple(c.entry() for c in channels),
                      tuple("<qq" if c.encoding == "little" else ">qq" for c in channels))


class Decoder:
    """Decodes the messages of one stream, re-parsing the data header only when its hash changes."""

    def __init__(self) -> None:
        self._key: tuple[str, str, int] | None = None
        self._header: DataHeader | None = None

    def data_header(self, main: MainHeader, frame: memoryview) -> DataHeader:
        # NOTE: the frame's length is part of the key: a sender that changes its channels but not the hash then
        # still gets its new header parsed most of the time (and mismatching values are caught per frame)
        key = (main.hash, main.dh_compression, frame.nbytes)
        if key != self._key or self._header is None:
            self._key = None  # NOTE: a header that fails to parse leaves no stale one behind
            self._header = parse_data_header(frame, main.dh_compression)
            self._key = key
        return self._header

    def decode(self, frames: Sequence[memoryview]) -> Pulse | None:
        """The pulse of one message; ``None`` for a message whose data header lists no channel."""
        if len(frames) < 2:
            raise DecodeError("truncated", f"{len(frames)} frame(s); a message has at least the two headers")
        main = parse_main_header(frames[0])
        header = self.data_header(main, frames[1])
        if not header.channels:
            return None
        want = 2 + 2 * len(header.channels)
        if len(frames) != want:
            raise DecodeError("truncated", f"pulse {main.pulse_id}: {len(frames)} frames, the data header's "
                                           f"{len(header.channels)} channels need {want}")
        return self._pulse(main, header, frames)

    @staticmethod
    def _pulse(main: MainHeader, header: DataHeader, frames: Sequence[memoryview]) -> Pulse:
        entries: list[dict[str, Any]] = []
        parts: list[memoryview] = []
        bad: list[tuple[str, str]] = []
        offset = 0
        for i, spec in enumerate(header.channels):
            value, stamp = frames[2 + 2 * i], frames[3 + 2 * i]
            problem = None
            if value.nbytes:
                problem = spec.check(value)
                if problem is None and stamp.nbytes not in (0, 16):
                    problem = f"timestamp frame of {stamp.nbytes} bytes (16 or none)"
            if problem is not None:
                bad.append((spec.name, problem))
            present = bool(value.nbytes) and problem is None
            size = value.nbytes if present else 0
            timestamp = list(struct.unpack(header.ts_formats[i], stamp)) if present and stamp.nbytes else None
            entries.append({**header.entries[i], "present": present, "timestamp": timestamp, "offset": offset,
                            "size": size})
            if present:
                parts.append(value)
                offset += size
        # NOTE: a single value (say one image) is forwarded as its own frame's buffer, not copied
        payload: Any = parts[0] if len(parts) == 1 else b"".join(parts)
        metadata = {"pulse_id": main.pulse_id, "global_timestamp": [main.sec, main.ns], "hash": main.hash,
                    "channels": entries}
        return Pulse(main, metadata, payload, bad)
