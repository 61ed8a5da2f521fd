"""The sender's intake: events from the source become queued files; names that cannot go on the wire are refused
and reported; files still being written wait on a delayed queue; one file's failure is recorded, never fatal.

A mixin of ``Sender`` (router thread only); the attributes below are the sender's.
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import deque

import zmq

from hidra_core.sender.fetch import FetchFailed, describe
from hidra_core.sender.ledger import FAILED, REFUSED, SEEN, SENT, UNCONFIRMED, VANISHED, Ledger
from hidra_core.sender.storage_link import StorageLink
from hidra_core.types import FileEvent

__all__ = ["Intake", "MAX_QUEUED"]

log = logging.getLogger(__name__)

# NOTE: events beyond this wait in the source's socket (then the kernel's inotify queue), which keeps the
# sender's memory bounded on huge trees; an inotify overflow only costs a rescan, never a file.
MAX_QUEUED = 20_000
# NOTE: a file some process still writes is looked at again after this, doubling up to the maximum; its close
# (CLOSE_WRITE) usually brings it back sooner.
_BUSY_DELAY_S = (0.2, 5.0)


class Intake:
    ledger: Ledger
    link: StorageLink
    events: zmq.Socket
    stats: dict[str, int]
    _queue: deque[FileEvent]
    _queued: dict[str, bool]  # file_id -> force (send even if unchanged and in flight)
    _delayed: list[tuple[float, str]]  # heap of (due, file_id): files still being written
    _delayed_events: dict[str, tuple[FileEvent, bool, float]]  # file_id -> (event, force, delay)

    def _enqueue(self, event: FileEvent, force: bool = False) -> None:
        fid = event.file_id
        if fid in self._queued:
            self._queued[fid] = self._queued[fid] or force
            return
        self._queued[fid] = force
        self._queue.append(event)

    def _delay(self, event: FileEvent, force: bool) -> None:
        """Look at a file again later (a writer still has it open, or it may not be removed yet)."""
        fid = event.file_id
        previous = self._delayed_events.get(fid)
        delay = _BUSY_DELAY_S[0] if previous is None else min(previous[2] * 2, _BUSY_DELAY_S[1])
        self._delayed_events[fid] = (event, force or (previous is not None and previous[1]), delay)
        heapq.heappush(self._delayed, (time.monotonic() + delay, fid))

    def _release_delayed(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _due, fid = heapq.heappop(self._delayed)
            entry = self._delayed_events.get(fid)
            if entry is not None:
                self._enqueue(entry[0], entry[1])

    def _take_events(self) -> None:
        while len(self._queue) < MAX_QUEUED:
            try:
                batch = self.events.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                return
            for event in self._recorded([e for e in batch if self._valid_name(e)]):
                self._enqueue(event)

    def _recorded(self, batch: list[FileEvent]) -> list[FileEvent]:
        """The events the ledger took; one that it cannot take is reported and skipped, never fatal."""
        try:
            self.ledger.record_seen(batch)
            return batch
        except Exception as exc:
            if len(batch) == 1:
                self._failed(batch[0], "recording it in the ledger", exc)
                return []
        return [event for part in batch for event in self._recorded([part])]

    def _valid_name(self, event: FileEvent) -> bool:
        """Names must be valid UTF-8 to go on the wire; others are refused and reported, the file stays."""
        try:
            for text in (event.source_path, event.relative_path, event.filename):
                text.encode("utf-8")
            return True
        except UnicodeEncodeError:
            pass
        self.stats["refused"] += 1
        shown = FileEvent(_escaped(event.source_path), _escaped(event.relative_path), _escaped(event.filename))
        try:
            new = self.ledger.record_problem(shown, REFUSED, "name is not valid UTF-8")
        except Exception:
            log.exception("recording the refused name %s in the ledger failed", shown.file_id)
            new = True
        if new:
            log.warning("refusing %s/%s: its name is not valid UTF-8 (kept at the source; listed by hidra ledger)",
                        shown.source_path, shown.file_id)
        return False

    def _failed(self, event: FileEvent, what: str, exc: BaseException) -> None:
        """One file's failure: logged with the file, counted and recorded; the sender goes on."""
        self.stats["failed"] += 1
        log.error("%s: %s failed: %s (kept at the source; tried again when it changes or at the next start)",
                  event.file_id, what, describe(exc), exc_info=not isinstance(exc, (OSError, FetchFailed)))
        try:
            self.ledger.record_problem(event, FAILED, f"{what}: {describe(exc)}")
        except Exception:
            log.exception("recording the failure of %s in the ledger failed", event.file_id)

    def _vanished(self, event: FileEvent) -> None:
        """Gone before it was sent: forgotten (temp files come and go); gone after a send that was never
        confirmed: recorded, since the user may have expected a copy."""
        fid = event.file_id
        self._delayed_events.pop(fid, None)
        row = self.ledger.get(fid)
        if row is None or fid in self.link.in_flight:
            return
        if row.state == SEEN:
            log.debug("%s vanished before it was sent", fid)
            self.ledger.forget(fid)
        elif row.state in (SENT, UNCONFIRMED, FAILED):
            log.warning("%s vanished from the source before its copy was confirmed", fid)
            self.ledger.set_state(fid, VANISHED, "vanished from the source before its copy was confirmed")


def _escaped(text: str) -> str:
    """A name as printable text: undecodable bytes as ``\\xNN``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")
