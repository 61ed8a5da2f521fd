"""One file on its way out: metadata, chunking and checksums, driven chunk by chunk by the sender loop.

Its chunks are handed in, with their checksums, by the fetch worker (``pending``) and go out in order, never
copied here."""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hidra_core.checksum import DEFAULT_ALGORITHM, new_hasher
from hidra_core.errors import HidraError
from hidra_core.interfaces import FileStat
from hidra_core.protocol import HTYPES, encode_metadata
from hidra_core.types import FileEvent

__all__ = ["Checksums", "InFlight", "Outgoing", "ZERO_COPY_MIN"]

# NOTE: below this size ZeroMQ copying the payload is cheaper than tracking a zero-copy frame.
ZERO_COPY_MIN = 64 * 1024


class Checksums:
    """The checksums of one file's chunks, computed as they are read (in the fetch worker's thread: xxh3
    releases the GIL, so the pipelines hash in parallel) and handed on with them."""

    def __init__(self, chunk_count: int) -> None:
        self._left = chunk_count
        self._file = new_hasher(DEFAULT_ALGORITHM) if chunk_count > 1 else None

    def add(self, payload: Any) -> tuple[Any, str, str | None]:
        """``(payload, its checksum, the file's checksum if it is the last chunk, else None)``."""
        digest = new_hasher(DEFAULT_ALGORITHM)
        digest.update(payload)
        chunk_sum = digest.hexdigest()
        self._left -= 1
        if self._file is None:
            return payload, chunk_sum, chunk_sum if self._left == 0 else None
        self._file.update(payload)
        return payload, chunk_sum, self._file.hexdigest() if self._left == 0 else None


@dataclass
class InFlight:
    """A file completely handed to the transport, waiting for the storage target's confirmation."""

    event: FileEvent
    stat: FileStat
    checksum: str
    chunk_count: int
    sent_at: float
    member: int = 0  # of the storage receiver group
    confirmed: set[int] = field(default_factory=set)
    proof: bool = False  # a confirmation carried a matching file checksum


class Outgoing:
    """Produces the wire messages ``[metadata, payload]`` of one file, one chunk per ``next_message``."""

    def __init__(self, event: FileEvent, stat: FileStat, chunksize: int, base: dict[str, Any]) -> None:
        self.event = event
        self.stat = stat
        self.started = math.inf  # when its first chunk went out (see StorageLink.sent)
        self.chunk_count = max(1, math.ceil(stat.size / chunksize))
        # chunks read, not yet sent: (payload, its checksum, the file's checksum with the last chunk, else None)
        self.pending: deque[tuple[Any, str, str | None]] = deque()
        self._number = 0
        self.checksum = ""
        self.deliveries: list[Any] = []  # analysis clients admitted for this file (dispatch.Delivery)
        self.local: Any = None  # handle of the sender's local copy, if one is kept
        self._meta = {
            **base,
            "htype": HTYPES[event.kind],
            "filename": event.filename,
            "relative_path": event.relative_path,
            "source_path": event.source_path,
            "filesize": stat.size,
            "file_mod_time": stat.mtime_ns / 1e9,
            "file_create_time": stat.ctime_ns / 1e9,
            "chunksize": chunksize,
            "chunk_count": self.chunk_count,
            "checksum_algorithm": DEFAULT_ALGORITHM,
        }
        if event.series:
            self._meta["series"] = event.series
        if event.metadata:
            self._meta["metadata"] = event.metadata

    @property
    def done(self) -> bool:
        return self._number >= self.chunk_count

    @property
    def sent_any(self) -> bool:
        return self._number > 0

    @property
    def ready(self) -> bool:
        """The next chunk is here."""
        return bool(self.pending)

    def next_message(self) -> tuple[bytes, Any]:
        """The next chunk's encoded metadata and its payload buffer (never copied here)."""
        payload, chunk_sum, file_sum = self.pending.popleft()
        number = self._number
        if number == 0:
            self.started = time.monotonic()
        last = number == self.chunk_count - 1
        meta = self._meta
        meta["chunk_number"] = number
        meta["last_chunk"] = last
        meta["chunk_checksum"] = chunk_sum
        if last:
            if file_sum is None:
                raise HidraError(f"{self.event.file_id}: the fetch worker gave no file checksum with the last chunk")
            self.checksum = meta["file_checksum"] = file_sum
        self._number += 1
        return encode_metadata(meta), payload

    def client_metadata(self, **changes: Any) -> bytes:
        """The current chunk's metadata as clients get it: clients never confirm, so no confirmation topic."""
        return encode_metadata({**self._meta, "confirmation_required": False, **changes})

    def close(self) -> None:
        """Stopping mid-file: let go of the chunks not sent."""
        self.pending.clear()

    def discard(self) -> int:
        """Drop the chunks not sent; returns their bytes (owed back to the fetch worker's budget)."""
        size = sum(len(chunk[0]) for chunk in self.pending)
        self.pending.clear()
        return size
