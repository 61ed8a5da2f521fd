"""The sender: event source -> router loop -> fetcher -> storage target, with the ledger keeping the state.

One router loop (the calling thread) owns the ledger, the fetcher and every socket but the source's; the event
source runs in its own thread and hands batches of events over an inproc socket. The loop never blocks on a
send: it polls the data socket for room, so confirmations, heartbeats and SIGTERM are always served. A file is
only sent once the storage receiver's beacon shows the confirmation channel is live; a restarted receiver
(new beacon instance) makes every unconfirmed file go out again; receivers store re-sent files idempotently.
"""
from __future__ import annotations

import logging
import os
import heapq
import socket
import time
from collections import deque
from typing import Any

import zmq

from hidra_core.config import DriverChoice, InstanceConfig
from hidra_core.sender.clients.dispatch import ClientDispatcher
from hidra_core.interfaces import FileStat, WriteTarget
from hidra_core.host.kernel import Endpoints, StopFlag, create_driver
from hidra_core.errors import HidraError
from hidra_core.sender.fetch import JOBS_AHEAD, FetchFailed, Fetching, Job, describe, retryable
from hidra_core.sender.ledger import (CONFIRMED, FAILED, REFUSED, REMOVED, SEEN, SENT, UNCONFIRMED, VANISHED, Ledger,
                                      LedgerRow)
from hidra_core.sender.outgoing import ZERO_COPY_MIN, Outgoing
from hidra_core.host.plugins import PluginHost
from hidra_core.protocol.confirmation import HEARTBEAT_TOPIC
from hidra_core.sender.source_thread import SourceThread
from hidra_core.sender.storage_link import StorageLink
from hidra_core.types import FileEvent

__all__ = ["Sender"]

log = logging.getLogger(__name__)

_SLICE_S = 0.02  # longest the loop sends before it serves its other sockets again
# NOTE: events beyond this wait in the source's socket (then the kernel's inotify queue), which keeps the
# sender's memory bounded on huge trees; an inotify overflow only costs a rescan, never a file.
_MAX_QUEUED = 20_000
# NOTE: a file some process still writes is looked at again after this, doubling up to the maximum; its close
# (CLOSE_WRITE) usually brings it back sooner.
_BUSY_DELAY_S = (0.2, 5.0)
_READ_ATTEMPTS = 3  # of a file whose read failed with a retryable error, before it counts as failed


class Sender:
    role = "sender"

    def __init__(self, config: InstanceConfig, host: PluginHost, *, source_name: str = "<defaults>") -> None:
        self.instance_config = config
        self.config = cfg = config.sender
        self.host = host
        self.stop = StopFlag()
        # Drivers are resolved before any socket exists, so a bad name or option fails start-up cleanly.
        self.source = create_driver("event source", cfg.source.type, cfg.source.options, source_name,
                                    f"sender.source.{cfg.source.type}")
        fetch = cfg.fetcher or DriverChoice(type=self.source.default_fetcher)
        self.fetcher = create_driver("fetcher", fetch.type, fetch.options, source_name, f"sender.fetcher.{fetch.type}")
        self.context = zmq.Context()
        self.endpoints = Endpoints(self.context, cfg.transports, source_name, "sender")
        for endpoint in (cfg.storage.data, cfg.storage.confirmations, cfg.clients.com, cfg.clients.request):
            self.endpoints.driver(endpoint)
        self.local: Any = None
        if cfg.local_target is not None:
            lt = cfg.local_target
            self.local = create_driver("writer", lt.writer, lt.options, source_name, "sender.local_target.options",
                                       target=lt.path)
            self.local_root = os.path.abspath(lt.path)
        self.clients = ClientDispatcher(cfg.clients, self.endpoints, cfg.compat_version, storing=self.local is not None,
                                        authorize=host.authorize_receiver if host.has_authorizers else None)
        self.topic = f"{socket.getfqdn()}_{os.getpid()}".encode()
        self.stats = {"sent": 0, "bytes": 0, "confirmed": 0, "removed": 0, "resent": 0, "unconfirmed": 0,
                      "failed": 0, "refused": 0}
        self._queue: deque[FileEvent] = deque()
        self._queued: dict[str, bool] = {}  # file_id -> force (send even if unchanged and in flight)
        self._delayed: list[tuple[float, str]] = []  # heap of (due, file_id): files still being written
        self._delayed_events: dict[str, tuple[FileEvent, bool, float]] = {}  # file_id -> (event, force, delay)
        self.link = StorageLink(cfg.storage)
        self._current: Outgoing | None = None  # the file being sent: the oldest job of the fetch worker
        self._current_job: int | None = None
        self._retries: dict[str, int] = {}
        self._stash: list[Any] | None = None
        self._waiting_since: float | None = None
        self._removing = cfg.storage.remove_source == "after_confirmation"

    # -- lifecycle -------------------------------------------------------------------------------------

    def run(self) -> int:
        self.stop.install()
        self.host.startup(self)
        if self.config.storage.accept_legacy_confirmations:
            log.warning("accept_legacy_confirmations is on: confirmations without a checksum count as storage proof")
        self.ledger = Ledger(self.config.ledger.path, self.source.root)
        source = SourceThread(self.source, self.context, self.stop)
        try:
            self._open_sockets(source.endpoint)
            source.start()
            if not source.wait_ready():
                return 1
            self._resume()
            log.info("hidra sender ready: source %s %s, storage %s, %s, ledger %s", self.config.source.type,
                     self.source.root or "", self.config.storage.data, self.clients.bound(), self.config.ledger.path)
            self._loop(source)
            return 0
        finally:
            source.join()
            self._close()

    def _open_sockets(self, events_endpoint: str) -> None:
        storage = self.config.storage
        self.events = self.context.socket(zmq.PULL)
        self.events.linger = 0
        self.events.rcvhwm = 64
        self.events.bind(events_endpoint)
        monitors: list[zmq.Socket] = []
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        self.data = self.endpoints.open(zmq.PUSH, storage.data, bind=False, hwm=storage.hwm,
                                        prepare=lambda sock: monitors.append(sock.get_monitor_socket(events)))
        self.data_monitor = monitors[0]
        self.confirmations = self.endpoints.open(zmq.SUB, storage.confirmations, bind=False, hwm=1_000_000)
        self.confirmations.subscribe(self.topic)
        self.confirmations.subscribe(HEARTBEAT_TOPIC)
        self.poller = zmq.Poller()
        self.poller.register(self.events, zmq.POLLIN)
        self.poller.register(self.confirmations, zmq.POLLIN)
        self.poller.register(self.data, 0)
        self.poller.register(self.data_monitor, zmq.POLLIN)
        self.fetching = Fetching(self.fetcher, self.context, self.config.chunksize)
        self.poller.register(self.fetching.socket, zmq.POLLIN)
        self.clients.open(self.poller)

    def _close(self) -> None:
        if getattr(self, "fetching", None) is not None:
            self.fetching.close()
        self.clients.close()
        if getattr(self, "data_monitor", None) is not None:
            self.data.disable_monitor()
        for name in ("data_monitor", "events", "data", "confirmations"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        self.ledger.commit()
        counts = self.ledger.counts()
        self.ledger.close()
        self.context.destroy(linger=0)  # term() would hang forever on a socket an error path left open
        pending = len(self.link.in_flight) + len(self._queue)
        log.info("hidra sender stopped: %s; ledger %s; %d files pending (kept at the source, resumed at next start)",
                 self.stats, counts, pending)
        self.host.shutdown(self)

    def _resume(self) -> None:
        """Queue what a previous run left unfinished; the source's own start-up scan adds the rest."""
        for event, row in self.ledger.pending(include_confirmed=self._removing):
            self.link.attempts[event.file_id] = row.attempts
            self._enqueue(event, force=True)
        if self._queue:
            log.info("resuming %d files from the ledger", len(self._queue))

    # -- the router loop -------------------------------------------------------------------------------

    def _loop(self, source: SourceThread) -> None:
        poller = self.poller
        drain_until = None
        next_housekeeping = 0.0
        while True:
            now = time.monotonic()
            if self.stop.is_set() and drain_until is None:
                drain_until = now + self.config.drain_timeout_s
            link = self.link.up(now)
            self._release_delayed(now)
            self._ask_fetcher(draining=drain_until is not None)
            want = link and self._sendable()
            poller.modify(self.data, zmq.POLLOUT if want else 0)
            poller.modify(self.events, zmq.POLLIN if len(self._queue) < _MAX_QUEUED else 0)
            ready = dict(poller.poll(100))
            if self.events in ready:
                self._take_events()
            if self.confirmations in ready:
                self._take_confirmations()
            if self.data_monitor in ready:
                self.link.on_monitor(self.data_monitor)
            if self.fetching.socket in ready:
                self._take_fetched()
            if self.data in ready:
                self._pump(draining=drain_until is not None)
            housekeeping = now >= next_housekeeping
            if housekeeping:
                self._expire(now)
                self._warn_if_waiting(now, link)
                next_housekeeping = now + 0.5
            self._serve_clients(ready, housekeeping)
            self.ledger.commit()
            if drain_until is not None and self._current is None and (
                    not self.link.in_flight or time.monotonic() > drain_until):
                return

    def _warn_if_waiting(self, now: float, link: bool) -> None:
        if link or not (self._queue or self.link.in_flight):
            self._waiting_since = None
            return
        if self._waiting_since is None:
            self._waiting_since = now
        elif now - self._waiting_since > 10:
            log.warning("storage receiver at %s not reachable (no beacon); %d files waiting",
                        self.config.storage.data, len(self._queue) + len(self.link.in_flight))
            self._waiting_since = now

    def _serve_clients(self, ready: dict[Any, int], housekeeping: bool) -> None:
        # NOTE: analysis clients are best effort: a bug in serving them must never stop the storage path.
        try:
            self.clients.on_ready(ready)
            if housekeeping:
                self.clients.housekeeping(time.monotonic())
        except Exception:
            log.exception("serving analysis clients failed; the storage path goes on")

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
        while len(self._queue) < _MAX_QUEUED:
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

    # -- fetching and sending --------------------------------------------------------------------------

    def _ask_fetcher(self, draining: bool) -> None:
        """Keep the fetch worker a few files ahead; when draining, only the file being sent goes on."""
        if not self.fetching.alive:
            raise HidraError("the fetch worker stopped; see the error above")
        if draining:
            for job in [j for j in self.fetching.jobs if j != self._current_job]:
                self.fetching.drop(job)
            return
        while len(self.fetching.jobs) < JOBS_AHEAD and self._queue:
            event = self._queue.popleft()
            force = self._queued.pop(event.file_id, False)
            try:
                row = self.ledger.get(event.file_id)
            except Exception as exc:
                self._failed(event, "looking it up in the ledger", exc)
                continue
            # NOTE: a version already stored is not read again; the worker only reports its stat.
            skip = row.identity if row is not None and row.state in (CONFIRMED, REMOVED) else None
            self.fetching.open(event, force, skip)

    def _sendable(self) -> bool:
        return self._stash is not None or (self._current is not None and self._current.ready)

    def _take_fetched(self) -> None:
        for header, payload in self.fetching.messages():
            try:
                self._on_fetched(header, payload)
            except Exception:  # NOTE: one file's bookkeeping must never stop the storage path
                log.exception("handling %s from the fetch worker failed", header[:2])
        self._advance()
        self.fetching.flush()

    def _on_fetched(self, header: tuple[Any, ...], payload: Any) -> None:
        kind, key = header[0], header[1]
        if kind in ("removed", "kept", "remove_failed"):
            return self._removal_done(kind, key, header[2])
        job = self.fetching.jobs.get(key)
        if job is None:  # dropped meanwhile: its chunks only return their budget
            if payload is not None:
                self.fetching.credit(len(payload))
            return None
        if kind == "chunk":
            if job.out is None or job.received >= job.out.chunk_count:
                self.fetching.credit(len(payload))
            else:
                job.received += 1
                # NOTE: a view of the received frame, not the frame: clients' sockets track their sends, which
                # only messages made from a buffer allow; either way the bytes are never copied.
                job.out.pending.append(payload.buffer)
            return None
        job.ended = kind != "stat"
        if kind in ("stat", "unchanged"):
            self._on_stat(key, job, header[2], unchanged=kind == "unchanged")
        elif kind == "end" and job.out is not None and job.received < job.out.chunk_count:
            self._job_failed(key, FetchFailed(f"the fetcher gave {job.received} of {job.out.chunk_count} chunks",
                                              False))
        elif kind == "error":
            self._job_failed(key, FetchFailed(header[2], header[3]))
        elif kind in ("busy", "vanished"):
            self.fetching.drop(key)
            if kind == "busy":
                log.log(logging.DEBUG if job.event.file_id in self._delayed_events else logging.INFO,
                        "%s is still open for writing; sent once it is closed", job.event.file_id)
                self._delay(job.event, job.force)
            else:
                self._vanished(job.event)
        return None

    def _on_stat(self, key: int, job: Job, stat: FileStat, unchanged: bool) -> None:
        event, fid = job.event, job.event.file_id
        self._delayed_events.pop(fid, None)
        row = self.ledger.get(fid)
        if row is not None and _same_version(row, stat):
            if row.state == CONFIRMED and self._removing:
                self._remove(event, stat)
            if row.state in (CONFIRMED, REMOVED):
                self.fetching.drop(key)
                return
        flight = self.link.in_flight.get(fid)
        if unchanged or (not job.force and flight is not None and flight.stat == stat):
            self.fetching.drop(key)
            if unchanged:  # NOTE: the ledger moved on since the worker was asked: ask again
                self._enqueue(event, job.force)
            return
        base = {"confirmation_required": self.topic.decode(), "version": self.config.compat_version}
        try:
            if self.host.has_enrichers:
                base.update(self.host.enrich_metadata(event, dict(base)))
        except Exception as exc:
            self.fetching.drop(key)
            self._failed(event, "enriching its metadata", exc)
            return
        job.out = Outgoing(event, stat, self.config.chunksize, base)

    def _advance(self) -> None:
        """The oldest file the worker has stat'ed becomes the one being sent (files go out in order)."""
        while self._current is None and self.fetching.jobs:
            key, job = next(iter(self.fetching.jobs.items()))
            if job.out is None:
                return
            try:
                self._prepare(job.out)
            except Exception as exc:
                self.fetching.drop(key)
                self._failed(job.event, "starting to send it", exc)
                continue
            self._current, self._current_job = job.out, key

    def _prepare(self, out: Outgoing) -> None:
        """Analysis clients and the local copy, chosen once the file is next to go."""
        event, stat = out.event, out.stat
        if self.clients.active:
            try:
                out.deliveries = self.clients.plan(event.filename, stat.size, out.chunk_count)
            except Exception:  # clients are best effort; storage goes on
                log.exception("choosing analysis clients for %s failed", event.file_id)
        if self.local is not None:
            parts = tuple(event.relative_path.split("/")) if event.relative_path else ()
            out.local = self.local.open(WriteTarget(self.local_root, parts, event.filename,
                                                    {"file_mod_time": stat.mtime_ns / 1e9}))

    def _pump(self, draining: bool) -> None:
        deadline = time.monotonic() + _SLICE_S
        try:
            while time.monotonic() < deadline:
                if self._stash is None:
                    if self._current is None or not self._current.ready:
                        return
                    try:
                        self._stash = list(self._current.next_message())
                    except Exception as exc:
                        self._abandon(exc)
                        continue
                try:
                    self.data.send_multipart(self._stash, flags=zmq.NOBLOCK,
                                             copy=len(self._stash[1]) < ZERO_COPY_MIN)
                except zmq.Again:
                    return
                size = len(self._stash[1])
                self.stats["bytes"] += size
                self.fetching.credit(size)
                if self._current is not None:
                    self._side_copies(self._current, self._stash[1])
                self._stash = None
                if self._current is not None and self._current.done:
                    self._finish(self._current)
                    self._next_file()
        finally:
            self.fetching.flush()

    def _next_file(self) -> None:
        if self._current_job is not None:
            self.fetching.drop(self._current_job)
        self._current = self._current_job = None
        self._advance()

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

    def _abandon(self, exc: BaseException) -> None:
        current = self._current
        assert current is not None
        if self._stash is not None:  # NOTE: a message of this file the data socket has not taken yet
            self.fetching.credit(len(self._stash[1]))
            self._stash = None
        try:
            if current.local is not None:
                self.local.abort(current.local)
        finally:
            self._next_file()
            self._failed_or_retry(current.event, "reading it", exc)

    def _job_failed(self, key: int, exc: BaseException) -> None:
        if key == self._current_job:
            self._abandon(exc)
            return
        job = self.fetching.drop(key)
        if job is not None:
            self._failed_or_retry(job.event, "reading it", exc)

    def _failed_or_retry(self, event: FileEvent, what: str, exc: BaseException) -> None:
        """A retryable error (EIO, ETIMEDOUT, ...) brings the file back a few times before it counts as failed."""
        fid = event.file_id
        if getattr(exc, "retryable", False) or retryable(exc):
            attempt = self._retries.get(fid, 0) + 1
            if attempt < _READ_ATTEMPTS:
                self._retries[fid] = attempt
                log.warning("%s: %s failed (%s); trying again (%d of %d)", fid, what, describe(exc), attempt + 1,
                            _READ_ATTEMPTS)
                self._delay(event, force=True)
                return
        self._retries.pop(fid, None)
        self._failed(event, what, exc)

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

    def _finish(self, out: Outgoing) -> None:
        self._finish_local(out)
        self._retries.pop(out.event.file_id, None)
        try:
            self.ledger.mark_sent(out.event, out.stat.size, out.stat.mtime_ns, out.checksum, out.stat.identity)
        except Exception as exc:  # the file went out; the ledger resumes it at the next start at worst
            self._failed(out.event, "recording its send in the ledger", exc)
        if self.link.sent(out) > 1:
            self.stats["resent"] += 1
        self.stats["sent"] += 1

    # -- confirmations ---------------------------------------------------------------------------------

    def _take_confirmations(self) -> None:
        while True:
            try:
                frames = self.confirmations.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            resend, confirmed = self.link.on_message(frames)
            for event in resend:
                self._enqueue(event, force=True)
            for flight in confirmed:
                self.ledger.set_state(flight.event.file_id, CONFIRMED)
                self.stats["confirmed"] += 1
                if self._removing:
                    self._remove(flight.event, flight.stat)

    def _remove(self, event: FileEvent, stat: FileStat) -> None:
        """Ask the worker to remove the confirmed version; see ``_removal_done``."""
        self.fetching.remove(event, stat)

    def _removal_done(self, kind: str, event: FileEvent, detail: Any) -> None:
        """A source that changed or is still open is looked at again later (and sent again if it changed)."""
        if kind == "removed":
            self.ledger.set_state(event.file_id, REMOVED)
            self.stats["removed"] += 1
        elif kind == "kept":
            log.info("%s: %s; looked at again later", event.file_id, detail)
            self._delay(event, force=False)
        else:
            log.error("could not remove %s: %s (kept; retried at next start)", event.file_id, detail)

    def _expire(self, now: float) -> None:
        resend, given_up = self.link.expire(now)
        for event in resend:
            self._enqueue(event, force=True)
        for fid, attempts in given_up:
            log.error("%s: not confirmed after %d attempts; kept at the source, retried at next start", fid, attempts)
            self.ledger.set_state(fid, UNCONFIRMED)
            self.stats["unconfirmed"] += 1


def _same_version(row: LedgerRow, stat: FileStat) -> bool:
    """Whether the ledger's row is this version of the file (rows of older ledgers know no identity)."""
    if row.identity is not None:
        return row.identity == stat.identity
    return (row.size, row.mtime_ns) == (stat.size, stat.mtime_ns)


def _escaped(text: str) -> str:
    """A name as printable text: undecodable bytes as ``\\xNN``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")
