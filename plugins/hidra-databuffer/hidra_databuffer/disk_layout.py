"""The on-disk layout of the data buffer's disk tier (databuffer.md §12), and nothing that keeps state.

::

    ROOT/pulses/<pid // 100000>/<pid // 1000>.idx       1000 slots: delivered pulse (sec, ns)
    ROOT/channels/<encoded name>/configs.jsonl           the channel's config history, one line per change
    ROOT/channels/<encoded name>/<pid // 100000>/<pid // 1000>.seg   value frames as received, appended
    ROOT/channels/<encoded name>/<pid // 100000>/<pid // 1000>.idx   1000 slots: (state, sec, ns, offset, length,
                                                                     config number)

A slot is at ``(pid % 1000) * size`` in its index file and carries a CRC32 of its fields, so a never-written slot
(zeros of a sparse file) or a torn one reads as absent. Write order per pulse: each channel's value frame, then its
slot, then the pulse's slot, so the pulse slot is the commit mark: a reader (or a reload after SIGKILL) serves a
pulse only once its pulse slot is valid, and a channel slot only when its frame lies inside the segment file. A
channel's config lines are written before any slot that refers to them; a torn last line is cut off on reload.

Channel names become directory names by percent-encoding every byte of their UTF-8 form that is not
``[A-Za-z0-9_-]`` (so ``.``, ``..``, ``/``, ``:`` and NUL cannot name anything but one plain directory), and
decode back exactly; a name that is not valid UTF-8 (lone surrogates) or whose encoding is over 240 bytes is
refused (``BadName``) and kept in memory only.
"""
from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path
from hidra_databuffer._decode import ChannelConfig

__all__ = ["CHANNEL_SLOT", "FOLDER", "NO_CONFIG", "PULSE_SLOT", "SEGMENT", "BadName", "Slots", "decode_name",
           "encode_name", "read_configs", "segment_dir", "write_config"]

SEGMENT, FOLDER = 1000, 100_000
NO_CONFIG = 0xFFFFFFFF
ABSENT, VALUE, NONE = 0, 1, 2
_MAX_NAME = 240
_SAFE = re.compile(rb"[A-Za-z0-9_-]")
_ENCODED = re.compile(r"(?:[A-Za-z0-9_-]|%[0-9A-F]{2})+")


class BadName(ValueError):
    """A channel name that cannot be a directory name."""


def encode_name(name: str) -> str:
    """The directory name of a channel (reversible: ``decode_name`` gives ``name`` back)."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadName(f"channel name {name!r} is not valid UTF-8") from None
    if not raw:
        raise BadName("empty channel name")
    encoded = "".join(chr(b) if _SAFE.fullmatch(bytes([b])) else f"%{b:02X}" for b in raw)
    if len(encoded) > _MAX_NAME:
        raise BadName(f"channel name {name[:40]!r}... encodes to {len(encoded)} bytes, over {_MAX_NAME}")
    return encoded


def decode_name(encoded: str) -> str:
    """The channel name of a directory made by ``encode_name``; ``BadName`` for anything else."""
    if not _ENCODED.fullmatch(encoded):
        raise BadName(f"{encoded!r} is no encoded channel name")
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            raw.append(int(encoded[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(ord(encoded[i]))
            i += 1
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadName(f"{encoded!r} is not UTF-8") from None
    if encode_name(name) != encoded:  # NOTE: only the canonical form, so one name is one directory
        raise BadName(f"{encoded!r} is not the canonical encoding of {name!r}")
    return name


def segment_dir(base: Path, segment: int) -> Path:
    return base / str(segment * SEGMENT // FOLDER)


class Slots:
    """Fixed-size slots of ``fields`` followed by their CRC32."""

    def __init__(self, fields: str) -> None:
        self.body = struct.Struct(fields)
        self.size = self.body.size + 4

    def pack(self, *values: int) -> bytes:
        body = self.body.pack(*values)
        return body + struct.pack("<I", zlib.crc32(body))

    def unpack_all(self, data: bytes) -> list[tuple[int, ...] | None]:
        """Every slot of an index file's bytes (short files: the rest are absent); ``None`` for an invalid one."""
        out: list[tuple[int, ...] | None] = []
        body = self.body.size
        for number in range(SEGMENT):
            at = number * self.size
            slot = data[at:at + self.size]
            if len(slot) < self.size or slot[:body].count(0) == body or zlib.crc32(slot[:body]) != int.from_bytes(
                    slot[body:], "little"):
                out.append(None)
            else:
                out.append(self.body.unpack(slot[:body]))
        return out


#: a delivered pulse: (sec, ns)
PULSE_SLOT = Slots("<qI")
#: a channel at a pulse: (state, sec, ns, offset, length, config number)
CHANNEL_SLOT = Slots("<BqIQQI")


def _config_json(pid: int, config: ChannelConfig) -> bytes:
    return (json.dumps({"first_pulse_id": pid, "type": config.type, "shape": list(config.shape),
                        "encoding": config.encoding, "compression": config.compression}) + "\n").encode()


def write_config(path: Path, pid: int, config: ChannelConfig) -> None:
    """Append one history line (a single ``write`` of a whole line, O_APPEND)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, _config_json(pid, config))
    finally:
        os.close(fd)


def read_configs(path: Path) -> list[tuple[int, ChannelConfig]]:
    """The history lines up to the first torn or bad one; the file is cut there, so later lines number right."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    found: list[tuple[int, ChannelConfig]] = []
    good = 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn line")
            entry = json.loads(line)
            config = ChannelConfig(str(entry["type"]), tuple(int(n) for n in entry["shape"]), str(entry["encoding"]),
                                   str(entry["compression"]))
            found.append((int(entry["first_pulse_id"]), config))
        except (ValueError, KeyError, TypeError):
            break
        good += len(line)
    if good < len(data):
        os.truncate(path, good)
    return found
