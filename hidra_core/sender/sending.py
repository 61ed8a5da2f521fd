"""The sender's sending side: the fetch worker is kept a few files ahead, the oldest file it stat'ed goes out chunk
by chunk (storage first, then analysis clients and the local copy), and confirmed versions are removed through it.

A mixin of ``Sender`` (router thread only); the attributes below are the sender's.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from hidra_core.config import SenderConfig
from hidra_core.errors import HidraError
from hidra_core.host.logformat import SENDER_FILES_LOGGER, file_event
from hidra_core.host.plugins import PluginHost
from hidra_core.interfaces import FileStat, WriteTarget
from hidra_core.sender.clients.dispatch import ClientDispatcher
from hidra_core.sender.fetch import JOBS_AHEAD, FetchFailed, Job, describe, retryable
from hidra_core.sender.intake import Intake
from hidra_core.sender.ledger import CONFIRMED, REMOVED, LedgerRow
from hidra_core.sender.lane import Lane, Members, series_lane
from hidra_core.sender.outgoing import ZERO_COPY_MIN, InFlight, Outgoing
from hidra_core.types import FileEvent

__all__ = ["Sending"]

log = logging.getLogger(__name__)
files_log = logging.getLogger(SENDER_FILES_LOGGER)

_SLICE_S = 0.02  # longest the loop sends before it serves its other sockets again
_READ_ATTEMPTS = 3  # of a file whose read failed with a retryable error, before it counts as failed
_DEFERRED = 256  # queued files looked past in one turn while their own pipeline is full


class Sending(Intake):
    config: SenderConfig
    host: PluginHost
    clients: ClientDispatcher
    lanes: list[Lane]
    _members: Members  # chooses the storage group member of each file
    local: Any
    local_root: str
    topic: bytes
    _retries: dict[str, int]
    _removing: bool
    _limits: list[int]  # this turn: files each fetch worker may have (0: it is not asked)

    def _ask_fetcher(self, draining: bool) -> None:
        """Keep each fetch worker a few files ahead; when draining, only the files being sent go on."""
        for lane in self.lanes:
            if not lane.fetching.alive:
                raise HidraError("a fetch worker stopped; see the error above")
            if draining:
                for job in [j for j in lane.fetching.jobs if j != lane.job]:
                    lane.fetching.drop(job)
        if draining:
            return
        asked: list[list[tuple[FileEvent, bool, str | None]]] = [[] for _ in self.lanes]
        # NOTE: a worker is topped up once it is down to half its files, so that each request (and doorbell)
        # carries a batch of small files rather than one
        self._limits = [JOBS_AHEAD if len(lane.fetching.jobs) <= JOBS_AHEAD // 2 else 0 for lane in self.lanes]
        deferred: list[FileEvent] = []
        while self._queue and len(deferred) < _DEFERRED and self._room(asked):
            event = self._queue.popleft()
            index = self._lane_for(event, asked)
            if index is None:  # NOTE: its own pipeline is full; the files behind it may take another
                deferred.append(event)
                continue
            force = self._queued.pop(event.file_id, False)
            if event.inline:  # NOTE: never stored before (its row goes when storage confirms it): nothing to skip
                asked[index].append((event, force, None))
                continue
            try:
                row = self.ledger.get(event.file_id)
            except Exception as exc:
                self._failed(event, "looking it up in the ledger", exc)
                continue
            # NOTE: a version already stored is not read again; the worker only reports its stat.
            asked[index].append((event, force, row.identity if row is not None and row.state in (CONFIRMED, REMOVED)
                                 else None))
        self._queue.extendleft(reversed(deferred))
        for lane, files in zip(self.lanes, asked):
            if files:
                lane.fetching.open(files)

    def _room(self, asked: list[list[Any]]) -> bool:
        return any(len(lane.fetching.jobs) + len(files) < limit
                   for lane, files, limit in zip(self.lanes, asked, self._limits))

    def _lane_for(self, event: FileEvent, asked: list[list[Any]]) -> int | None:
        """The pipeline ``event`` takes (see lane.py), or None while that one has no room."""
        lanes = self.lanes
        if len(lanes) == 1:
            index = 0
        elif event.series:
            index = series_lane(event.series, len(lanes))
        else:
            # NOTE: a file goes out again through the pipeline of its earlier send: that copy may still be queued
            # in its socket, and two copies on two connections would reach the receiver interleaved.
            fid = event.file_id
            sticky = [lane.index for lane in lanes if fid in lane.fetching.files or
                      any(e.file_id == fid for e, _f, _s in asked[lane.index])]
            pinned = self.link.lanes.get(fid)
            if sticky:
                index = sticky[0]
            elif pinned is not None:
                index = pinned
            else:
                index = min(range(len(lanes)), key=lambda i: (len(lanes[i].fetching.jobs) + len(asked[i])
                                                              - self._limits[i]))
        return index if len(lanes[index].fetching.jobs) + len(asked[index]) < self._limits[index] else None

    def _take_fetched(self, lane: Lane) -> None:
        for header in lane.fetching.messages():
            try:
                self._on_fetched(lane, header)
            except Exception as exc:  # NOTE: one file's bookkeeping must never stop the storage path
                if isinstance(header[1], int) and header[1] in lane.fetching.jobs:
                    self._job_failed(lane, header[1], exc)  # and it must not hold up the files behind it
                else:
                    log.exception("handling %s from the fetch worker failed", header[:2])
        self._advance(lane)
        lane.fetching.flush()

    def _on_fetched(self, lane: Lane, header: tuple[Any, ...]) -> None:
        kind, key = header[0], header[1]
        if kind in ("removed", "kept", "remove_failed"):
            return self._removal_done(kind, key, header[2])
        fetching = lane.fetching
        job = fetching.jobs.get(key)
        if kind == "chunk":
            out = job.out if job is not None else None
            if job is None or out is None or job.received >= out.chunk_count:
                fetching.credit(len(header[2][0]))  # dropped meanwhile: it only returns its budget
            else:
                job.received += 1
                job.ended = job.received == out.chunk_count
                out.pending.append(header[2])
            return None
        if job is None:
            return None
        job.ended = kind != "stat"
        if kind in ("stat", "unchanged"):
            self._on_stat(lane, key, job, header[2], unchanged=kind == "unchanged")
        elif kind == "end" and job.out is not None and job.received < job.out.chunk_count:
            self._job_failed(lane, key, FetchFailed(f"the fetcher gave {job.received} of {job.out.chunk_count}"
                                                    " chunks", False))
        elif kind == "error":
            self._job_failed(lane, key, FetchFailed(header[2], header[3]))
        elif kind in ("busy", "vanished"):
            fetching.drop(key)
            if kind == "busy":
                log.log(logging.DEBUG if job.event.file_id in self._delayed_events else logging.INFO,
                        "%s is still open for writing; sent once it is closed", job.event.file_id)
                self._delay(job.event, job.force)
            else:
                self._vanished(job.event)
        return None

    def _on_stat(self, lane: Lane, key: int, job: Job, stat: FileStat, unchanged: bool) -> None:
        event, fid = job.event, job.event.file_id
        self._delayed_events.pop(fid, None)
        row = None if event.inline else self.ledger.get(fid)
        if row is not None and _same_version(row, stat):
            if row.state == CONFIRMED and self._removing:
                self._remove(event, stat)
            if row.state in (CONFIRMED, REMOVED):
                lane.fetching.drop(key)
                return
        if unchanged or (not job.force and self._going_out(lane, job, stat)):
            lane.fetching.drop(key)
            if unchanged:  # NOTE: the ledger moved on since the worker was asked: ask again
                self._enqueue(event, job.force)
            return
        base = {"confirmation_required": self.topic.decode(), "version": self.config.compat_version}
        try:
            if self.host.has_enrichers:
                base.update(self.host.enrich_metadata(event, dict(base)))
        except Exception as exc:
            lane.fetching.drop(key)
            self._failed(event, "enriching its metadata", exc)
            return
        job.out = Outgoing(event, stat, self.config.chunksize, base)

    def _going_out(self, lane: Lane, job: Job, stat: FileStat) -> bool:
        """This version is awaiting its confirmation, or an earlier job sends it (a scan and an event for one
        file both asked for it; both are in this pipeline)."""
        fid = job.event.file_id
        flight = self.link.in_flight.get(fid)
        if flight is not None and flight.stat == stat:
            return True
        return lane.fetching.files.get(fid, 0) > 1 and any(
            other is not job and other.event.file_id == fid and other.out is not None and other.out.stat == stat
            for other in lane.fetching.jobs.values())

    def _advance(self, lane: Lane) -> None:
        """The oldest file the worker has stat'ed becomes the one being sent (files go out in order)."""
        while lane.current is None and lane.fetching.jobs:
            key, job = next(iter(lane.fetching.jobs.items()))
            if job.out is None:
                return
            try:
                self._prepare(job.out)
            except Exception as exc:
                lane.fetching.drop(key)
                self._failed(job.event, "starting to send it", exc)
                continue
            lane.current, lane.job = job.out, key
            lane.member = self._members(job.event, self.link.live)

    def _reroute(self, live: list[int]) -> None:
        """Files on their way to a member that went away: to another one (from their first chunk again)."""
        for lane in self.lanes:
            if lane.current is None or lane.member in live or not live:
                continue
            if not lane.started:
                lane.member = self._members(lane.current.event, live)
                continue
            event = lane.current.event
            log.info("%s: its receiver went away mid-file; sent to another member of the group", event.file_id)
            if lane.current.local is not None:
                self.local.abort(lane.current.local)
            lane.stash = None
            self._next_file(lane)
            self._enqueue(event, force=True)

    def _prepare(self, out: Outgoing) -> None:
        """Analysis clients and the local copy, chosen once the file is next to go."""
        event, stat = out.event, out.stat
        if self.clients.active:
            try:
                out.deliveries = self.clients.plan(event.filename, stat.size, out.chunk_count)
            except Exception:  # clients are best effort; storage goes on
                log.exception("choosing analysis clients for %s failed", event.file_id)
        if self.local is not None and event.kind in self.local.accepts:
            parts = tuple(event.relative_path.split("/")) if event.relative_path else ()
            out.local = self.local.open(WriteTarget(self.local_root, parts, event.filename,
                                                    {"file_mod_time": stat.mtime_ns / 1e9}))

    def _pump(self, lane: Lane) -> None:
        deadline = time.monotonic() + _SLICE_S
        try:
            while time.monotonic() < deadline:
                if lane.stash is None:
                    if lane.current is None or not lane.current.ready:
                        return
                    try:
                        lane.stash = list(lane.current.next_message())
                    except Exception as exc:
                        self._abandon(lane, exc)
                        continue
                sock = lane.sockets[lane.member]  # NOTE: each file has its own member
                if sock is not lane.polled:
                    return  # polled for room next turn, if that member is up
                try:
                    sock.send_multipart(lane.stash, flags=zmq.NOBLOCK, copy=len(lane.stash[1]) < ZERO_COPY_MIN)
                except zmq.Again:
                    return
                size = len(lane.stash[1])
                self.stats["bytes"] += size
                lane.fetching.credit(size)
                if lane.current is not None:
                    self._side_copies(lane.current, lane.stash[1])
                lane.stash = None
                if lane.current is not None and lane.current.done:
                    self._finish(lane, lane.current)
                    self._next_file(lane)
        finally:
            lane.fetching.flush()

    def _next_file(self, lane: Lane) -> None:
        if lane.job is not None:
            lane.fetching.drop(lane.job)
        lane.current = lane.job = None
        self._advance(lane)

    def _side_copies(self, out: Outgoing, payload: Any) -> None:
        """After storage took a chunk: the same buffer to admitted clients and to the local copy."""
        if out.deliveries:
            try:
                self.clients.send_chunk(out.deliveries, out.client_metadata(), payload, out.done)
            except Exception:
                log.exception("sending %s to analysis clients failed", out.event.file_id)
                out.deliveries = []
        if out.local is not None:
            try:
                self.local.write(out.local, payload)
            except Exception as exc:
                log.error("local copy of %s failed: %s", out.event.file_id, exc)
                self.local.abort(out.local)
                out.local = None

    def _finish_local(self, out: Outgoing) -> None:
        """Make the local copy durable; only then may metadata-only clients be pointed at it."""
        if out.local is None:
            return
        try:
            self.local.close(out.local)
            self.local.commit([out.local])
        except Exception as exc:
            log.error("local copy of %s failed: %s", out.event.file_id, exc)
            self.local.abort(out.local)
            return
        finally:
            out.local = None
        if out.deliveries:
            try:
                self.clients.send_metadata(out.deliveries, out.client_metadata(source_path=self.local_root))
            except Exception:
                log.exception("sending metadata of %s to analysis clients failed", out.event.file_id)

    def _abandon(self, lane: Lane, exc: BaseException) -> None:
        current = lane.current
        assert current is not None
        if lane.stash is not None:  # NOTE: a message of this file the data socket has not taken yet
            lane.fetching.credit(len(lane.stash[1]))
            lane.stash = None
        try:
            if current.local is not None:
                self.local.abort(current.local)
        finally:
            self._next_file(lane)
            self._failed_or_retry(current.event, "reading it", exc)

    def _job_failed(self, lane: Lane, key: int, exc: BaseException) -> None:
        if key == lane.job:
            self._abandon(lane, exc)
            return
        job = lane.fetching.drop(key)
        if job is not None:
            self._failed_or_retry(job.event, "reading it", exc)

    def _failed_or_retry(self, event: FileEvent, what: str, exc: BaseException) -> None:
        """A retryable error (EIO, ETIMEDOUT, ...) brings the file back a few times before it counts as failed."""
        fid = event.file_id
        if getattr(exc, "retryable", False) or retryable(exc):
            attempt = self._retries.get(fid, 0) + 1
            if attempt < _READ_ATTEMPTS:
                self._retries[fid] = attempt
                self.stats["fetch_retries"] += 1
                log.warning("%s: %s failed (%s); trying again (%d of %d)", fid, what, describe(exc), attempt + 1,
                            _READ_ATTEMPTS)
                self._delay(event, force=True)
                return
        self._retries.pop(fid, None)
        self._failed(event, what, exc)

    def _finish(self, lane: Lane, out: Outgoing) -> None:
        self._finish_local(out)
        self._retries.pop(out.event.file_id, None)
        try:
            # NOTE: in-memory data is lost alike whether it was sent or not when the sender dies: its row stays 'seen'
            if not out.event.inline:
                self.ledger.mark_sent(out.event, out.stat.size, out.stat.mtime_ns, out.checksum, out.stat.identity)
        except Exception as exc:  # the file went out; the ledger resumes it at the next start at worst
            self._failed(out.event, "recording its send in the ledger", exc)
        attempts, confirmed = self.link.sent(out, lane.member, lane.index if len(self.lanes) > 1 else None)
        if files_log.isEnabledFor(logging.INFO):
            fid = out.event.file_id
            files_log.info("sent %s: %d bytes, attempt %d", fid, out.stat.size, attempts, extra=file_event(fid, "sent"))
        if attempts > 1:
            self.stats["resent"] += 1
        self.stats["sent"] += 1
        if confirmed is not None:
            self._confirmed([confirmed])

    def _confirmed(self, flights: list[InFlight]) -> None:
        """The storage receiver confirmed durable, matching copies: record them, and remove the sources if asked."""
        self.stats["confirmed"] += len(flights)
        stored = []
        for flight in flights:
            if flight.event.inline:  # NOTE: safe at storage: its row and its data are let go (see ledger.py)
                self.ledger.forget(flight.event.file_id)
                self._release(flight.event)
            else:
                stored.append(flight)
        if not stored:
            return
        self.ledger.set_states((flight.event.file_id for flight in stored), CONFIRMED)
        if files_log.isEnabledFor(logging.INFO):
            for fid in (flight.event.file_id for flight in stored):
                files_log.info("confirmed %s", fid, extra=file_event(fid, "confirmed"))
        if self._removing:
            for flight in stored:
                self._remove(flight.event, flight.stat)

    def _remove(self, event: FileEvent, stat: FileStat) -> None:
        """Ask a worker to remove the confirmed version; see ``_removal_done``."""
        lanes = self.lanes
        lanes[series_lane(event.file_id, len(lanes)) if len(lanes) > 1 else 0].fetching.remove(event, stat)

    def _removal_done(self, kind: str, event: FileEvent, detail: Any) -> None:
        """A source that changed or is still open is looked at again later (and sent again if it changed)."""
        if kind == "removed":
            self.ledger.set_state(event.file_id, REMOVED)
            self.stats["removed"] += 1
            files_log.info("removed %s at the source", event.file_id, extra=file_event(event.file_id, "removed"))
        elif kind == "kept":
            log.info("%s: %s; looked at again later", event.file_id, detail)
            self._delay(event, force=False)
        else:
            log.error("could not remove %s: %s (kept; retried at next start)", event.file_id, detail)


def _same_version(row: LedgerRow, stat: FileStat) -> bool:
    """Whether the ledger's row is this version of the file (rows of older ledgers know no identity)."""
    if row.identity is not None:
        return row.identity == stat.identity
    return (row.size, row.mtime_ns) == (stat.size, stat.mtime_ns)
