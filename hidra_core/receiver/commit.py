"""The receiver's commit thread: makes complete files durable in groups, then confirms them."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from hidra_core.protocol.confirmation import encode_confirmations, encode_heartbeat

__all__ = ["CommitItem", "CommitThread"]

log = logging.getLogger(__name__)

_BEACON_S = 0.2


@dataclass(frozen=True)
class CommitItem:
    """A complete, verified file waiting to be made durable and confirmed."""

    file_id: str
    handles: list[Any]
    topic: str | None
    chunk_count: int
    algorithm: str | None
    checksum: str | None
    size: int


class CommitThread:
    """Owns the confirmation PUB socket; ``None`` on the receiver's queue means: commit what is left, stop."""

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver
        self._bound: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name="hidra-commit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_bound(self) -> str | None:
        """The endpoint the PUB socket is bound to, or None if binding failed (already logged)."""
        return self._bound.get()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def _main(self) -> None:
        r = self.receiver
        try:
            pub = r.endpoints.open(zmq.PUB, r.config.confirmations, bind=True, hwm=1_000_000)
        except Exception as exc:
            log.error("cannot open the confirmation socket: %s", exc)
            self._bound.put(None)
            return
        try:
            self._bound.put(pub.getsockopt_string(zmq.LAST_ENDPOINT))
            self._run(pub)
        finally:
            pub.close()

    def _run(self, pub: zmq.Socket) -> None:
        r = self.receiver
        info = {"pid": os.getpid(), "target": os.path.abspath(r.config.target)}
        beacon_at = 0.0
        stopping = False
        while not stopping:
            batch: list[CommitItem] = []
            try:
                item = r._commits.get(timeout=_BEACON_S)
                while True:
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                    if len(batch) >= r.config.commit_batch:
                        break
                    item = r._commits.get_nowait()
            except queue.Empty:
                pass
            if batch:
                self._commit(pub, batch)
            now = time.monotonic()
            if now - beacon_at >= _BEACON_S:
                pub.send_multipart(encode_heartbeat(r.instance, info))
                beacon_at = now

    def _commit(self, pub: zmq.Socket, batch: list[CommitItem]) -> None:
        r = self.receiver
        try:
            for index, writer in enumerate(r.writers):
                writer.commit([item.handles[index] for item in batch])
        except Exception as exc:
            # Some files may be in place, but none is confirmed: the sender sends them again.
            r.stats["failed"] += len(batch)
            r.status.error(exc)
            log.error("commit of %d files failed, none confirmed: %s", len(batch), exc)
            for item in batch:
                for writer, handle in zip(r.writers, item.handles):
                    writer.abort(handle)
            return
        for item in batch:
            r.stats["stored"] += 1
            r.stats["bytes"] += item.size
            if item.topic is None:
                continue
            for message in encode_confirmations(item.topic.encode(), item.file_id, item.chunk_count,
                                                item.algorithm, item.checksum):
                pub.send_multipart(message)
