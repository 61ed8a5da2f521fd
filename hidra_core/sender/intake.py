"""The sender's intake: events from the source become queued files; names that cannot go on the wire are refused
and reported; files still being written wait on a delayed queue; one file's failure is recorded, never fatal.
Events that carry their data (stream frames) are held, their bytes counted in the hand-off's bound, until storage
confirmed them or they ended otherwise (``_release``).

A mixin of ``Sender`` (router thread only); the attributes below are the sender's.
"""
from __future__ import annotations

import heapq
import json
import logging
import time
from collections import deque

from hidra_core.host.logformat import file_event
from hidra_core.sender.fetch import FetchFailed, describe
from hidra_core.sender.handoff import Handoff
from hidra_core.sender.ledger import FAILED, LOST, REFUSED, SEEN, SENT, UNCONFIRMED, VANISHED, Ledger
from hidra_core.sender.storage_link import StorageLink
from hidra_core.types import KINDS, FileEvent

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
    handoff: Handoff
    stats: dict[str, int]
    _held: dict[str, int]  # file_id -> payload bytes of an event whose data the sender holds
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
        batch = [event for event in self.handoff.take(MAX_QUEUED - len(self._queue)) if self._admitted(event)]
        for event in self._recorded(batch):
            self._enqueue(event)
        dropped = self.handoff.take_dropped()
        if dropped:
            self._lost(dropped, "dropped: the sender's hold (sender.hold.max_bytes) was full")

    def _admitted(self, event: FileEvent) -> bool:
        if not self._valid(event):
            return False
        if not event.inline:
            return True
        fid = event.file_id
        if fid in self._held:
            # NOTE: two events of one name in memory at once: the second cannot replace the first unseen
            # (its row is the first one's, so it is counted and logged, not recorded)
            self.handoff.release(event.held_bytes)
            self.stats["lost"] += 1
            log.error("%s: dropped: an earlier event of this name is still held (not yet confirmed); event sources"
                      " must name the events they hold uniquely", fid)
            return False
        self._held[fid] = event.held_bytes
        return True

    def _release(self, event: FileEvent) -> None:
        """The sender is done with an event's data: its bytes leave the hold (no-op for files)."""
        size = self._held.pop(event.file_id, None)
        if size is not None:
            self.handoff.release(size)

    def _lost(self, events: list[FileEvent], reason: str) -> None:
        """Data that arrived in memory and will never reach storage: counted, logged and recorded."""
        self.stats["lost"] += len(events)
        log.error("%d events lost (%s), first %s; recorded as 'lost' in the ledger", len(events), reason,
                  events[0].file_id)
        for event in events:
            try:
                self.ledger.record_problem(event, LOST, reason)
            except Exception:
                log.exception("recording the loss of %s in the ledger failed", event.file_id)

    def _recorded(self, batch: list[FileEvent]) -> list[FileEvent]:
        """The events the ledger took; one that it cannot take is reported and skipped, never fatal."""
        try:
            self.ledger.record_seen(batch)
            return batch
        except Exception as exc:
            if len(batch) == 1:
                self._failed(batch[0], "recording it in the ledger", exc)
                self._release(batch[0])
                return []
        return [event for part in batch for event in self._recorded([part])]

    def _valid(self, event: FileEvent) -> bool:
        """Names must be valid UTF-8 to go on the wire, the type known and the metadata JSON; others are refused
        and reported (a file stays at the source)."""
        problem = _problem(event)
        if not problem:
            return True
        self.stats["refused"] += 1
        self.handoff.release(event.held_bytes)
        shown = FileEvent(_escaped(event.source_path), _escaped(event.relative_path), _escaped(event.filename))
        try:
            new = self.ledger.record_problem(shown, REFUSED, problem)
        except Exception:
            log.exception("recording the refused name %s in the ledger failed", shown.file_id)
            new = True
        if new:
            log.warning("refusing %s/%s: %s (%s; listed by hidra ledger)", shown.source_path, shown.file_id,
                        problem, "its data is dropped" if event.inline else "kept at the source")
        return False

    def _failed(self, event: FileEvent, what: str, exc: BaseException) -> None:
        """One file's failure: logged with the file, counted and recorded; the sender goes on. An event whose
        data was held in memory is let go: nothing could send it again."""
        self.stats["failed"] += 1
        self.link.lanes.pop(event.file_id, None)
        kept = "its data is dropped" if event.inline else \
            "kept at the source; tried again when it changes or at the next start"
        log.error("%s: %s failed: %s (%s)", event.file_id, what, describe(exc), kept,
                  exc_info=not isinstance(exc, (OSError, FetchFailed)), extra=file_event(event.file_id, "failed"))
        self._release(event)
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


def _problem(event: FileEvent) -> str:
    """Why an event cannot go on the wire, or ""."""
    try:
        for text in (event.source_path, event.relative_path, event.filename, event.series):
            text.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if event.kind not in KINDS:
        return f"unknown message type {event.kind!r} (known: {', '.join(sorted(KINDS))})"
    try:
        json.dumps(event.metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"its metadata is not JSON: {exc}"
    return ""


def _escaped(text: str) -> str:
    """A name as printable text: undecodable bytes as ``\\xNN``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")
