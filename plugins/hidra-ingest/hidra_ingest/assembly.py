"""Reassembly of the files producers push (create / write / close, or one ``file`` message), with the limits.

Everything here is plain bookkeeping, no sockets: the source feeds messages in and sends the replies that come out
(``outbox``). A producer is known by its ZeroMQ routing id; it has at most one file open.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hidra_core import FILE, FileEvent, HidraError, ingest

log = logging.getLogger(__name__)

__all__ = ["Assembler", "Producer"]


@dataclass
class _Partial:
    seq: int
    name: str
    where: tuple[str, str]
    parts: list[Any] = field(default_factory=list)
    size: int = 0


@dataclass
class Producer:
    rid: bytes
    last_seen: float
    name: str = "?"
    open: _Partial | None = None
    refused: int = 0  # the file whose further writes are ignored (its error was sent)
    done: int = 0  # every file up to this one is accounted for (held by the sender, or refused)
    acked: int = 0  # the last ``done`` sent to the producer
    first: int = 0  # the first file number this source saw from it (the producer checks it against its own)
    last_file: int = 0  # the highest file number seen


class _Refused(HidraError):
    """A file (or message) is refused; the text goes back to the producer."""


class Assembler:
    def __init__(self, source_path: str, max_file_bytes: int, max_open_files: int, max_open_bytes: int) -> None:
        self.source_path = source_path
        self.max_file_bytes = max_file_bytes
        self.max_open_files = max_open_files
        self.max_open_bytes = max_open_bytes
        self.open_bytes = 0  # bytes of every producer's open file together
        self.producers: dict[bytes, Producer] = {}
        self.outbox: list[tuple[bytes, bytes]] = []
        self.stats = {"files": 0, "bytes": 0, "refused": 0, "malformed": 0, "abandoned": 0, "lost": 0,
                      "replies_dropped": 0}

    def handle(self, rid: bytes, frames: list[Any], now: float) -> FileEvent | None:
        """One message of producer ``rid``: the complete file's event, if this message completed one."""
        producer = self.producers.get(rid)
        if producer is None:
            producer = self.producers[rid] = Producer(rid, now)
        producer.last_seen = now
        try:
            msg = ingest.decode(frames)
        except HidraError as exc:
            self.stats["malformed"] += 1
            log.warning("zmq_ingest: malformed message from producer %s: %s", producer.name, exc)
            self._reply(producer, ingest.encode(ingest.ERROR, file=0, error=f"malformed message: {exc}"))
            return None
        try:
            return self._dispatch(producer, msg)
        except _Refused as exc:
            self._refuse(producer, msg.file, str(exc))
            return None

    def _dispatch(self, producer: Producer, msg: ingest.IngestMessage) -> FileEvent | None:
        op, seq = msg.op, msg.file
        if op in (ingest.CREATE, ingest.FILE):
            producer.name = msg.fields["producer"]
            self._check_sequence(producer, seq)
            if producer.open is not None:
                self.discard(producer, f"file {seq} was started while it was open")
            started = self._start(producer, seq, msg.fields["name"])
            if op == ingest.CREATE:
                log.debug("zmq_ingest: file %d %r of producer %s started", seq, started.name, producer.name)
                producer.open = started
                return None
            self._append(started, 0, msg.data)
            return self._complete(producer, started)
        if op not in (ingest.WRITE, ingest.CLOSE, ingest.ABORT):
            raise _Refused(f"op {op!r} is not for a source")
        partial = producer.open
        if partial is None or partial.seq != seq:
            if seq == producer.refused:
                return None  # NOTE: the rest of a refused file; its error was sent once
            raise _Refused(f"{op} of file {seq}, which is not open (never created, or discarded)")
        if op == ingest.WRITE:
            self._append(partial, msg.fields["offset"], msg.data)
            return None
        if op == ingest.ABORT:
            self._forget(producer)
            producer.done = max(producer.done, seq)
            return None
        if msg.fields["size"] != partial.size:
            raise _Refused(f"{partial.name!r}: closed with size {msg.fields['size']}, {partial.size} bytes arrived")
        producer.open = None
        return self._complete(producer, partial)

    def _check_sequence(self, producer: Producer, seq: int) -> None:
        """Files are numbered without gaps: a gap is files lost with a dropped connection, which must not pass
        for acknowledged."""
        if not producer.first:
            producer.first = seq
        elif seq > producer.last_file + 1:
            self.stats["lost"] += 1
            why = f"files {producer.last_file + 1} to {seq - 1} never arrived (lost with a dropped connection)"
            log.warning("zmq_ingest: producer %s: %s", producer.name, why)
            self._reply(producer, ingest.encode(ingest.ERROR, file=producer.last_file + 1, error=why))
        producer.last_file = max(producer.last_file, seq)

    def _start(self, producer: Producer, seq: int, name: str) -> _Partial:
        try:
            where = ingest.split_name(name)
        except HidraError as exc:
            raise _Refused(f"name refused: {exc}") from None
        if sum(p.open is not None for p in self.producers.values()) >= self.max_open_files:
            raise _Refused(f"{name!r}: {self.max_open_files} files are open already (max_open_files)")
        return _Partial(seq, name, where)

    def _append(self, partial: _Partial, offset: int, data: Any) -> None:
        size = memoryview(data).nbytes
        if offset != partial.size:
            raise _Refused(f"{partial.name!r}: data at offset {offset}, but {partial.size} bytes arrived (lost data)")
        if partial.size + size > self.max_file_bytes:
            raise _Refused(f"{partial.name!r} exceeds max_file_bytes ({self.max_file_bytes})")
        if self.open_bytes + size > self.max_open_bytes:
            raise _Refused(f"{partial.name!r}: the files being assembled hold {self.open_bytes} bytes already"
                           f" (max_open_bytes {self.max_open_bytes})")
        partial.parts.append(data)
        partial.size += size
        self.open_bytes += size

    def _complete(self, producer: Producer, partial: _Partial) -> FileEvent:
        self.open_bytes -= partial.size
        parts = partial.parts
        # NOTE: one message is passed on as it arrived (zero-copy); pieces are joined once
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        producer.done = max(producer.done, partial.seq)
        self.stats["files"] += 1
        self.stats["bytes"] += partial.size
        relative_path, filename = partial.where
        return FileEvent(self.source_path, relative_path, filename, kind=FILE, metadata={"producer": producer.name},
                         payload=payload, size=partial.size, version=f"{producer.rid.hex()}-{partial.seq}")

    def _refuse(self, producer: Producer, seq: int, why: str) -> None:
        self.stats["refused"] += 1
        log.warning("zmq_ingest: refused file %d of producer %s: %s", seq, producer.name, why)
        if producer.open is not None and producer.open.seq == seq:
            self._forget(producer)
        producer.refused = seq
        producer.done = max(producer.done, seq)
        self._reply(producer, ingest.encode(ingest.ERROR, file=seq, error=why))

    def _forget(self, producer: Producer) -> None:
        if producer.open is not None:
            self.open_bytes -= producer.open.size
            producer.open = None

    def _reply(self, producer: Producer, header: bytes) -> None:
        self.outbox.append((producer.rid, header))

    def discard(self, producer: Producer, why: str) -> None:
        """Forget the producer's open file (it died, went quiet, or the source stops)."""
        partial = producer.open
        if partial is None:
            return
        self._forget(producer)
        producer.refused = partial.seq
        producer.done = max(producer.done, partial.seq)
        self.stats["abandoned"] += 1
        log.warning("zmq_ingest: discarded the partial file %r (%d bytes) of producer %s: %s", partial.name,
                    partial.size, producer.name, why)
        self._reply(producer, ingest.encode(ingest.ERROR, file=partial.seq,
                                            error=f"{partial.name!r} discarded: {why}"))

    def expire(self, now: float, idle_s: float) -> None:
        """Discard files of producers quiet for ``idle_s``; forget quiet producers that are owed nothing."""
        for rid, producer in list(self.producers.items()):
            if now - producer.last_seen < idle_s:
                continue
            if producer.open is not None:
                self.discard(producer, f"nothing arrived for {idle_s} s (abandon_after_s)")
            elif producer.done == producer.acked:
                del self.producers[rid]

    def with_open_files(self) -> list[Producer]:
        return [p for p in self.producers.values() if p.open is not None]
