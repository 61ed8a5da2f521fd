"""Reassembly of data messages into whole files (hidra4-protocol.md §6), checking integrity where the sender
says how: ``chunk_count``/``last_chunk`` and checksums of ``hidra-file-1.0`` messages, the §6.2 end-of-file rule
for 4.x senders. Chunks of different files may interleave; each file is keyed by its ``file_id`` (§6.3).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from hidra_core.checksum import new_hasher
from hidra_core.client.errors import ChecksumError
from hidra_core.errors import ProtocolError
from hidra_core.protocol import DataMessage, decode_data, is_alive_test

__all__ = ["CompleteFile", "Reassembler"]

log = logging.getLogger(__name__)

_NULL = b"null"


@dataclass(frozen=True)
class CompleteFile:
    """A whole file (``data``), or a metadata-only notice (``data is None``)."""

    metadata: dict[str, Any]
    data: bytes | None


@dataclass
class _Partial:
    buf: bytearray
    next_chunk: int
    algorithm: str | None
    file_hash: Any
    touched: float = field(default_factory=time.monotonic)


def _frame_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _view(frame: Any) -> memoryview:
    """The payload without a copy, whether it is a ``zmq.Frame`` or bytes."""
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def _payload_len(frame: Any) -> int:
    return len(_view(frame))


def _is_metadata_only(meta: dict[str, Any], payload: Any) -> bool:
    """``b"null"`` marks a metadata-only message, unless the metadata says this chunk really is 4 bytes long."""
    if _payload_len(payload) != len(_NULL) or _frame_bytes(payload) != _NULL:
        return False
    size, chunksize, number = (_int(meta.get(k)) for k in ("filesize", "chunksize", "chunk_number"))
    if size is None or chunksize is None or number is None:
        return True
    return min(chunksize, size - number * chunksize) != len(_NULL)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Reassembler:
    """Feed it every message of the data socket; it returns each file once its last chunk arrived.

    ``metadata_only``: every message is a notice (the metadata delivery modes). ``drop_corrupt``: a file that
    fails its integrity check is logged and dropped instead of raising ``ChecksumError``. Partial files untouched
    for ``stale_after_s`` are discarded (a sender abandons files stalled past its deadline, §9 D6).
    """

    def __init__(self, *, metadata_only: bool = False, drop_corrupt: bool = False, stale_after_s: float = 300.0,
                 max_partials: int = 1000) -> None:
        self.metadata_only = metadata_only
        self.drop_corrupt = drop_corrupt
        self.stale_after_s = stale_after_s
        self.max_partials = max_partials
        self._partials: dict[str, _Partial] = {}
        self._unknown_algorithms: set[str] = set()
        self.dropped = 0

    @property
    def pending(self) -> list[str]:
        """Ids of files of which some but not all chunks arrived."""
        return list(self._partials)

    def feed(self, frames: Sequence[Any]) -> CompleteFile | None:
        if is_alive_test(frames):
            return None
        if len(frames) != 2:
            self._drop(f"message with {len(frames)} frame(s) ignored")
            return None
        try:
            meta = json.loads(_frame_bytes(frames[0]))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # NOTE: RecursionError: nested too deeply
            self._drop(f"metadata frame is not JSON ({exc})")
            return None
        if not isinstance(meta, dict):
            self._drop("metadata frame is not a JSON object")
            return None
        if self.metadata_only or _is_metadata_only(meta, frames[1]):
            return CompleteFile(meta, None)
        try:
            msg = decode_data(frames)
        except ProtocolError as exc:
            self._drop(f"undecodable data message: {exc}")
            return None
        return self._add(msg)

    def _drop(self, why: str) -> None:
        self.dropped += 1
        log.warning("%s", why)
        return None

    def _start(self, msg: DataMessage) -> _Partial:
        self._prune()
        algorithm = msg.metadata.get("checksum_algorithm")
        file_hash = self._hasher(algorithm) if isinstance(algorithm, str) else None
        partial = _Partial(bytearray(), 0, algorithm if file_hash is not None else None, file_hash)
        self._partials[msg.file_id] = partial
        return partial

    def _add(self, msg: DataMessage) -> CompleteFile | None:
        fid, number = msg.file_id, msg.chunk_number
        partial = self._partials.get(fid)
        if number == 0:
            if partial is not None and partial.next_chunk > 0:
                log.info("%s: chunk 0 again after %d chunk(s); the sender restarted the file", fid, partial.next_chunk)
            partial = self._start(msg)
        elif partial is None:
            self._drop(f"{fid}: chunk {number} without chunk 0, ignored")
            return None
        elif number == partial.next_chunk - 1:
            log.debug("%s: chunk %d repeated, ignored", fid, number)
            return None
        elif number != partial.next_chunk:
            del self._partials[fid]
            self._drop(f"{fid}: chunk {number} where {partial.next_chunk} was due; file dropped")
            return None
        partial.touched = time.monotonic()
        payload = _view(msg.payload)
        if not self._check_chunk(msg, payload, partial):
            return None
        partial.buf += payload
        partial.next_chunk = number + 1
        if not self._is_last(msg):
            return None
        del self._partials[fid]
        return self._finish(msg, partial)

    @staticmethod
    def _is_last(msg: DataMessage) -> bool:
        if isinstance(msg.metadata.get("last_chunk"), bool):
            return msg.is_last
        count = _int(msg.metadata.get("chunk_count"))
        if count is not None:
            return msg.chunk_number + 1 >= count
        return msg.is_last  # the 4.x rule of §6.2, applied by decode_data

    def _hasher(self, algorithm: str) -> Any:
        try:
            return new_hasher(algorithm)
        except KeyError:
            if algorithm not in self._unknown_algorithms:
                self._unknown_algorithms.add(algorithm)
                log.warning("checksum algorithm %r is unknown here: files using it are not verified", algorithm)
            return None

    def _corrupt(self, msg: DataMessage, why: str) -> None:
        self._partials.pop(msg.file_id, None)
        text = f"{msg.file_id}: {why}"
        if self.drop_corrupt:
            self._drop(f"{text}; file dropped")
            return
        raise ChecksumError(text, msg.file_id, msg.metadata)

    def _check_chunk(self, msg: DataMessage, payload: memoryview, partial: _Partial) -> bool:
        """False (or ``ChecksumError``) if the chunk is corrupt; feeds the file digest otherwise."""
        expected = msg.metadata.get("chunk_checksum")
        algorithm = msg.metadata.get("checksum_algorithm")
        if isinstance(expected, str) and isinstance(algorithm, str):
            hasher = self._hasher(algorithm)
            if hasher is not None:
                hasher.update(payload)
                if hasher.hexdigest() != expected:
                    self._corrupt(msg, f"chunk {msg.chunk_number} fails its {algorithm} checksum")
                    return False
        if partial.file_hash is not None:
            partial.file_hash.update(payload)
        return True

    def _finish(self, msg: DataMessage, partial: _Partial) -> CompleteFile | None:
        size = len(partial.buf)
        if size != msg.filesize:
            self._corrupt(msg, f"{size} bytes received, filesize says {msg.filesize}")
            return None
        expected = msg.metadata.get("file_checksum")
        if isinstance(expected, str) and partial.file_hash is not None and partial.file_hash.hexdigest() != expected:
            self._corrupt(msg, f"file fails its {partial.algorithm} checksum")
            return None
        metadata = dict(msg.metadata)
        metadata["chunk_number"] = None  # a reassembled file is no chunk (§6.4)
        return CompleteFile(metadata, bytes(partial.buf))

    def _prune(self) -> None:
        now = time.monotonic()
        for fid, partial in list(self._partials.items()):
            if now - partial.touched > self.stale_after_s:
                del self._partials[fid]
                self._drop(f"{fid}: no chunk for {self.stale_after_s:g} s, partial file dropped")
        while len(self._partials) >= self.max_partials:
            fid = min(self._partials, key=lambda k: self._partials[k].touched)
            del self._partials[fid]
            self._drop(f"{fid}: too many partial files, the oldest is dropped")
