"""The receiver's commit thread: makes complete files durable in groups, then confirms them.

Each stored file gets one INFO line (name, size, ms from its first chunk to durable) on the logger
``hidra_core.receiver.files``, which ``receiver.log_each_file: false`` turns down on its own; frames get a DEBUG
line, as do pulses (the writers report series and ranges).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from hidra_core.host.logformat import file_event
from hidra_core.protocol.confirmation import encode_confirmations, encode_heartbeat
from hidra_core.rest.state import COMMIT_BOUNDS_S, DURABLE_BOUNDS_S, Histogram
from hidra_core.types import FILE, FRAME, PULSE

__all__ = ["FILES_LOGGER", "CommitItem", "CommitThread"]

log = logging.getLogger(__name__)
FILES_LOGGER = "hidra_core.receiver.files"
files_log = logging.getLogger(FILES_LOGGER)
#: per-file error lines of one batch; the rest are summed up in one line
_DETAILED_FAILURES = 3
#: the longest subscription the confirmation PUB takes; a sender subscribes to its FQDN and pid (4.x alike)
MAX_SUBSCRIPTION_BYTES = 1024


def _bound_subscriptions(sock: zmq.Socket) -> None:
    # NOTE: libzmq keeps about 24 bytes of memory per subscribed byte: unbounded, 300 subscriptions of 64 KiB from
    # any host that reaches the port took a GiB. A longer one makes libzmq drop that subscriber's connection.
    sock.maxmsgsize = MAX_SUBSCRIPTION_BYTES

_BEACON_S = 0.2
_STREAMED = frozenset({FRAME, PULSE})  # logged at DEBUG: thousands a second
_SNDMORE = int(zmq.SNDMORE)


@dataclass(frozen=True)
class CommitItem:
    """A complete, verified file waiting to be made durable and confirmed."""

    file_id: str
    handles: list[Any]
    topic: bytes | None
    chunk_count: int
    algorithm: str | None
    checksum: str | None
    size: int
    started: float  # time.monotonic() of the first chunk
    kind: str = FILE


class CommitThread:
    """Owns the confirmation PUB socket; ``None`` on the receiver's queue means: commit what is left, stop."""

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver
        self._bound: queue.Queue[str | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name="hidra-commit", daemon=True)
        self.durable = Histogram(DURABLE_BOUNDS_S)  # NOTE: written by this thread only, read by the REST thread
        self.commit_time = Histogram(COMMIT_BOUNDS_S)

    def start(self) -> None:
        self._thread.start()

    def wait_bound(self) -> str:
        """The endpoint the PUB socket is bound to; re-raises here, in the caller's thread, why binding failed."""
        bound = self._bound.get()
        if isinstance(bound, BaseException):
            raise bound
        return bound

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        r = self.receiver
        try:
            pub = r.endpoints.open(zmq.PUB, r.config.confirmations, bind=True, hwm=1_000_000,
                                   prepare=_bound_subscriptions, name="confirmations")
        except Exception as exc:  # NOTE: handed to the main thread, so a busy port stops start-up like the others
            self._bound.put(exc)
            return
        try:
            self._bound.put(pub.getsockopt_string(zmq.LAST_ENDPOINT))
            self._run(pub)
        except BaseException:
            # NOTE: the receiving loop sees the thread gone and stops the receiver with a non-zero exit.
            log.exception("the commit thread died")
            raise
        finally:
            pub.close()  # by this thread, which owns it; its linger lets the last confirmations out

    def _run(self, pub: zmq.Socket) -> None:
        r = self.receiver
        info = {"pid": os.getpid(), "target": os.path.abspath(r.config.target)}
        beacon_at = 0.0
        stopping = False
        while not stopping:
            batch: list[CommitItem] = []
            try:
                item = r._commits.get(timeout=_BEACON_S)
                until = time.monotonic() + self._linger(item)
                while True:
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                    if len(batch) >= r.config.commit_batch:
                        break
                    wait = until - time.monotonic()
                    item = r._commits.get(timeout=wait) if wait > 0 else r._commits.get_nowait()
            except queue.Empty:
                pass
            if batch:
                self._commit(pub, batch)
            now = time.monotonic()
            if now - beacon_at >= _BEACON_S:
                pub.send_multipart(encode_heartbeat(r.instance, info))
                beacon_at = now

    def _linger(self, item: CommitItem | None) -> float:
        """How long to gather more items after ``item``: the longest ``commit_linger_s`` of its writers."""
        if item is None:
            return 0.0
        return max((w.commit_linger_s for w, h in zip(self.receiver.writers, item.handles) if h is not None),
                   default=0.0)

    def _commit(self, pub: zmq.Socket, batch: list[CommitItem]) -> None:
        stored = batch
        failed: list[tuple[CommitItem, BaseException]] = []
        began = time.monotonic()
        for index, writer in enumerate(self.receiver.writers):
            mine = [item for item in stored if item.handles[index] is not None]
            errors = _commit_each(writer, [item.handles[index] for item in mine])
            bad = {id(item): error for item, error in zip(mine, errors) if error is not None}
            failed += [(item, bad[id(item)]) for item in mine if id(item) in bad]
            stored = [item for item in stored if id(item) not in bad]
        now = time.monotonic()
        self.commit_time.observe(now - began)
        observe = self.durable.observe
        for item in stored:
            observe(now - item.started)
        if failed:
            self._failed(failed, len(batch))
        stats = self.receiver.stats
        stats["stored"] += len(stored)
        stats["bytes"] += sum(item.size for item in stored)
        _log_stored(stored)
        send = pub.send
        for item in stored:
            if item.topic is None:
                continue
            for message in encode_confirmations(item.topic, item.file_id, item.chunk_count, item.algorithm,
                                                item.checksum):
                # NOTE: send() per frame with a plain int flag costs a third of send_multipart()
                for frame in message[:-1]:
                    send(frame, _SNDMORE)
                send(message[-1])

    def _failed(self, failed: list[tuple[CommitItem, BaseException]], batch_size: int) -> None:
        """Forget files that could not be stored; they are not confirmed, so the sender sends them again."""
        r = self.receiver
        r.stats["failed"] += len(failed)
        r.status.error(failed[-1][1])
        for item, error in failed[:_DETAILED_FAILURES]:
            log.error("storing %s failed, not confirmed: %s: %s", item.file_id, type(error).__name__, error)
        if len(failed) > _DETAILED_FAILURES:
            log.error("%d of %d files of one commit failed, not confirmed (first ones above)", len(failed),
                      batch_size)
        for item, _error in failed:
            for writer, handle in zip(r.writers, item.handles):
                if handle is None:
                    continue
                try:
                    writer.abort(handle)
                except Exception:
                    log.exception("writer %s could not abort %s", type(writer).__name__, item.file_id)


def _log_stored(stored: list[CommitItem]) -> None:
    """One line per stored file at INFO; frames at DEBUG (a line per frame, thousands a second, would cost more
    than storing it; series writers log series). Nothing is done per file where nobody listens."""
    if not files_log.isEnabledFor(logging.INFO):
        return
    debug = files_log.isEnabledFor(logging.DEBUG)
    now = time.monotonic()
    for item in stored:
        if item.kind not in _STREAMED or debug:
            level = logging.INFO if item.kind not in _STREAMED else logging.DEBUG
            files_log.log(level, "stored %s: %d bytes, %.0f ms", item.file_id, item.size,
                          (now - item.started) * 1000, extra=file_event(item.file_id, "stored"))


def _commit_each(writer: Any, handles: list[Any]) -> list[BaseException | None]:
    """The writer's per-file results; a writer that raises, or answers wrongly, fails the whole batch."""
    if not handles:
        return []
    try:
        errors = list(writer.commit_each(handles))
    except Exception as exc:
        return [exc] * len(handles)
    if len(errors) != len(handles):
        wrong = RuntimeError(f"{type(writer).__name__}.commit_each returned {len(errors)} results for"
                             f" {len(handles)} files")
        return [wrong] * len(handles)
    return errors
