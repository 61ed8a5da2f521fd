"""The sender: event source -> router loop -> fetcher -> storage target, with the ledger keeping the state.

One router loop (the calling thread) owns the ledger and every socket but the source's and the fetch worker's;
the event source runs in its own thread and hands batches of events over an inproc socket, and every fetcher
call (stat, read, remove) runs in the fetch worker's thread (``fetch.py``), so a slow disk never holds the loop
up. Intake (``intake.py``) and sending (``sending.py``) are the loop's halves. The loop never blocks on a send:
it polls the data socket for room, so confirmations, heartbeats and SIGTERM are always served. A file is only
sent once the storage receiver's beacon shows the confirmation channel is live; a restarted receiver (new beacon
instance) makes every unconfirmed file go out again; receivers store re-sent files idempotently.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from typing import Any

import zmq

from hidra_core.config import InstanceConfig
from hidra_core.host.build import build_sender
from hidra_core.host.kernel import StopFlag
from hidra_core.host.notify import Notifier
from hidra_core.host.plugins import PluginHost
from hidra_core.protocol.confirmation import HEARTBEAT_TOPIC
from hidra_core.sender.backfill import Backfill
from hidra_core.sender.clients.dispatch import ClientDispatcher
from hidra_core.sender.fetch import Fetching
from hidra_core.sender.handoff import Handoff
from hidra_core.sender.intake import MAX_QUEUED
from hidra_core.sender.lane import Lane, Members
from hidra_core.sender.ledger import UNCONFIRMED, Ledger
from hidra_core.sender.outgoing import InFlight, Outgoing
from hidra_core.sender.sending import Sending
from hidra_core.sender.source_thread import SourceThread
from hidra_core.sender.storage_link import StorageLink
from hidra_core.rest.snapshot import sender_snapshot
from hidra_core.types import FileEvent

__all__ = ["Sender"]

log = logging.getLogger(__name__)


class Sender(Sending):
    role = "sender"

    def __init__(self, config: InstanceConfig, host: PluginHost, *, source_name: str = "<defaults>") -> None:
        self.instance_config = config
        self.config = cfg = config.sender
        self.host = host
        self.stop = StopFlag()
        self.notifier = Notifier()
        # Drivers are resolved before any socket exists, so a bad name or option fails start-up cleanly.
        # NOTE: one I/O thread per pipeline: a single one tops out near 2-3 GB/s of TCP on loopback.
        self.context = zmq.Context(io_threads=cfg.stream_count)
        built = build_sender(config, source_name, self.context)
        self.source, self.fetchers, self.local = built.source, built.fetchers, built.local
        self.endpoints = built.endpoints
        self.local_root = os.path.abspath(cfg.local_target.path) if cfg.local_target is not None else ""
        self.clients = ClientDispatcher(cfg.clients, self.endpoints, cfg.compat_version, storing=self.local is not None,
                                        authorize=host.authorize_receiver if host.has_authorizers else None)
        self.topic = f"{socket.getfqdn()}_{os.getpid()}".encode()
        self.stats = {"sent": 0, "bytes": 0, "confirmed": 0, "removed": 0, "resent": 0, "unconfirmed": 0,
                      "failed": 0, "refused": 0, "lost": 0, "fetch_retries": 0}
        # NOTE: made here, in this thread, before the source's thread may count
        self.source_counters = self.source.counters
        self._held: dict[str, int] = {}
        self._hold_warned_at = 0.0
        self._queue: deque[FileEvent] = deque()
        self._queued: dict[str, bool] = {}  # file_id -> force (send even if unchanged and in flight)
        self._delayed: list[tuple[float, str]] = []  # heap of (due, file_id): files still being written
        self._delayed_events: dict[str, tuple[FileEvent, bool, float]] = {}  # file_id -> (event, force, delay)
        self.link = StorageLink(cfg.storage)
        self._members = Members([data for data, _conf in cfg.storage.members])
        self.lanes: list[Lane] = []
        self._retries: dict[str, int] = {}
        self._waiting_since: float | None = None
        self._summary_at = time.monotonic()
        self._summarised = (0, 0, 0)  # stats sent, bytes and confirmed at the last summary
        self._removing = cfg.storage.remove_source == "after_confirmation"
        self.rest: Any = None  # the REST server (hidra_core.rest), None when sender.rest is off
        self.backfill: Backfill | None = None  # POST /backfill (with the REST server)
        self.snapshot: dict[str, Any] = {}  # what the REST thread reads; replaced whole, never changed
        self._hurry = False  # POST /stop: stop without waiting for the drain

    # -- lifecycle -------------------------------------------------------------------------------------

    def run(self) -> int:
        self.stop.install()
        self.host.startup(self)
        if self.config.storage.accept_legacy_confirmations:
            log.warning("accept_legacy_confirmations is on: confirmations without a checksum count as storage proof")
        self.ledger = Ledger(self.config.ledger.path, self.source.root)
        hold = self.config.hold
        self.handoff = Handoff(self.context, hold.max_bytes, hold.when_full, self.stop)
        source = SourceThread(self.source, self.context, self.stop, self.handoff)
        try:
            self._open_sockets()
            self._start_rest()  # NOTE: before the source's start-up scan, which may take long: GET /status says so
            source.start()
            if not source.wait_ready():
                return 1
            self._resume()
            log.info("hidra sender ready: source %s %s, storage %s, %d pipeline%s, %s, rest %s, ledger %s",
                     self.config.source.type, self.source.root or "", self.config.storage.data, len(self.lanes),
                     "s" if len(self.lanes) > 1 else "", self.clients.bound(),
                     self.rest.url if self.rest is not None else "none", self.ledger.path)
            self.notifier.ready(f"sending to {self.config.storage.data}")
            self._loop(source)
            return 0
        finally:
            if self.rest is not None:
                self.snapshot = sender_snapshot(self, "stopping")
                self.rest.stop()
            source.join()
            if self.backfill is not None:
                self.backfill.join()
            self._close()

    def _start_rest(self) -> None:
        if not self.config.rest.enabled:
            return
        from hidra_core.rest.server import RestServer

        def hurry() -> None:
            self._hurry = True
            self.stop.set()

        self.snapshot = sender_snapshot(self, "starting")
        self.backfill = Backfill(self.source, self.handoff, self.ledger.path, self.stop)
        self.rest = RestServer(self, self.config.rest, lambda: self.snapshot, hurry, self.ledger.path, self.backfill)
        self.rest.start()

    def _open_sockets(self) -> None:
        storage = self.config.storage
        self.poller = zmq.Poller()
        self.poller.register(self.handoff.socket, zmq.POLLIN)
        self._confirmation_sockets: dict[zmq.Socket, int] = {}
        for member, (_data, endpoint) in enumerate(storage.members):
            sub = self.endpoints.open(zmq.SUB, endpoint, bind=False, hwm=1_000_000, name="confirmations")
            self._confirmation_sockets[sub] = member
            sub.subscribe(self.topic)
            sub.subscribe(HEARTBEAT_TOPIC)
            self.poller.register(sub, zmq.POLLIN)
        self._monitors: dict[zmq.Socket, int] = {}
        for index in range(self.config.stream_count):
            fetching = Fetching(self.fetchers[index], self.context, self.config.chunksize)
            self.lanes.append(Lane(index, fetching, []))
            self.poller.register(fetching.socket, zmq.POLLIN)
            for member, (data, _conf) in enumerate(storage.members):
                self.lanes[-1].sockets.append(self._data_socket(data, member, monitor=index == 0))
        self.clients.open(self.poller)

    def _data_socket(self, endpoint: str, member: int, monitor: bool) -> zmq.Socket:
        """A pipeline's PUSH to one member; the first pipeline's sockets are watched for connects (a receiver
        without a beacon, see StorageLink)."""
        storage = self.config.storage
        group = len(storage.members) > 1

        def prepare(sock: zmq.Socket) -> None:
            # NOTE: no ZMTP PINGs towards the receiver: libzmq 4.3 aborts a receiver whose data connection is
            # reset while back-pressure holds its input, with a PING among the bytes it had read (Assertion
            # failed: !_io_error, stream_engine_base.cpp). Beacons say whether the member is there.
            sock.heartbeat_ivl = 0
            if group:  # NOTE: nothing queued towards a member that is not connected: its files go to the others
                sock.immediate = True
            if monitor:
                events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                watch = sock.get_monitor_socket(events)
                self._monitors[watch] = member
                self.poller.register(watch, zmq.POLLIN)

        sock = self.endpoints.open(zmq.PUSH, endpoint, bind=False, hwm=storage.hwm, prepare=prepare, name="data")
        self.poller.register(sock, 0)
        return sock

    def _close(self) -> None:
        for lane in self.lanes:
            lane.fetching.close()
            if lane.current is not None:
                lane.current.close()
                if lane.current.local is not None:
                    self.local.abort(lane.current.local)
        self.clients.close()
        for monitor in getattr(self, "_monitors", {}):
            monitor.close(linger=0)
        for lane in self.lanes:
            for sock in lane.sockets:
                sock.close(linger=0)
        for sock in getattr(self, "_confirmation_sockets", {}):
            sock.close(linger=0)
        self.handoff.close()
        self.ledger.commit()
        counts = self.ledger.counts()
        self.ledger.close()
        self.endpoints.close()
        self.context.destroy(linger=0)  # term() would hang forever on a socket an error path left open
        pending = len(self.link.in_flight) + len(self._queue)
        log.info("hidra sender stopped: %s; ledger %s; %d files pending (kept at the source, resumed at next start)",
                 self.stats, counts, pending)
        self.host.shutdown(self)

    def _resume(self) -> None:
        """Queue what a previous run left unfinished; the source's own start-up scan adds the rest. Data that
        was held in memory by that run is gone: recorded as lost."""
        lost = []
        for event, row in self.ledger.pending(include_confirmed=self._removing):
            if row.inline:
                lost.append(event)
                continue
            self.link.attempts[event.file_id] = row.attempts
            self._enqueue(event, force=True)
        if lost:
            self._lost(lost, "held in memory by a sender that stopped before storage confirmed it")
        if self._queue:
            log.info("resuming %d files from the ledger", len(self._queue))

    # -- the router loop -------------------------------------------------------------------------------

    def _loop(self, source: SourceThread) -> None:
        poller = self.poller
        drain_until = None
        next_housekeeping = 0.0
        group = len(self._members.names) > 1
        while True:
            now = time.monotonic()
            if self.stop.is_set() and drain_until is None:
                drain_until = now + self.config.drain_timeout_s
                self.notifier.stopping()
            self.notifier.tick(now)
            live, resend = self.link.poll(now)
            for event in resend:
                self._enqueue(event, force=True)
            if group:
                self._reroute(live)
            self._release_delayed(now)
            self._ask_fetcher(draining=drain_until is not None)
            self._want_room(live)
            taking = len(self._queue) < MAX_QUEUED
            poller.modify(self.handoff.socket, zmq.POLLIN if taking else 0)
            ready = dict(poller.poll(100))
            if taking and (self.handoff.socket in ready or len(self.handoff)):
                self._take_events()
            for sock, member in self._confirmation_sockets.items():
                if sock in ready:
                    self._take_confirmations(sock, member)
            for monitor, member in self._monitors.items():
                if monitor in ready:
                    self.link.on_monitor(member, monitor)
            for lane in self.lanes:
                if lane.fetching.socket in ready:
                    self._take_fetched(lane)
                if lane.polled is not None and lane.polled in ready:
                    self._pump(lane)
            housekeeping = now >= next_housekeeping
            if housekeeping:
                self._housekeeping(now, bool(live))
                next_housekeeping = now + 0.5
            self._serve_clients(ready, housekeeping)
            self.ledger.commit()
            if drain_until is not None and (self._hurry or self._drained(drain_until)):
                return

    def _want_room(self, live: list[int]) -> None:
        """Poll for room on the socket of each pipeline that has something for a member that is up."""
        for lane in self.lanes:
            want = lane.sockets[lane.member] if lane.sendable and lane.member in live else None
            if want is not lane.polled:
                if lane.polled is not None:
                    self.poller.modify(lane.polled, 0)
                if want is not None:
                    self.poller.modify(want, zmq.POLLOUT)
                lane.polled = want

    def _sending(self) -> list[Outgoing]:
        return [lane.current for lane in self.lanes if lane.current is not None]

    def _drained(self, drain_until: float) -> bool:
        """Draining ends once nothing awaits the receiver, or at the deadline whatever the state (mid-file too)."""
        sending = self._sending()
        if not sending and not self.link.in_flight:
            return True
        if time.monotonic() < drain_until:
            return False
        half = ", ".join(out.event.file_id for out in sending)
        log.warning("drain_timeout_s (%.3g s) is over: stopping with %s%d files awaiting confirmation",
                    self.config.drain_timeout_s, f"{half} half sent and " if half else "", len(self.link.in_flight))
        return True

    def _housekeeping(self, now: float, link: bool) -> None:
        if self.rest is not None:
            self.snapshot = sender_snapshot(self, "draining" if self.stop.is_set() else "running")
        self._expire(now)
        self._warn_if_waiting(now, link)
        self._warn_if_hold_full(now)
        interval = self.config.summary_interval_s
        if interval and now >= self._summary_at + interval:
            self._summary(now)

    def _summary(self, now: float) -> None:
        totals = (self.stats["sent"], self.stats["bytes"], self.stats["confirmed"])
        queued, waiting, retrying = len(self._queue), len(self.link.in_flight), len(self.link.retrying)
        # NOTE: an idle sender logs one last summary, then stays quiet until something happens.
        if totals != self._summarised or queued or waiting or retrying or self._sending():
            span = now - self._summary_at
            held = f"; {self.handoff.held / 2**20:.1f} MiB held in memory" if self.handoff.held else ""
            lost = f", {self.stats['lost']} lost" if self.stats["lost"] else ""
            log.info("summary: %.1f files/s, %.2f MiB/s over %.0f s; %d queued, %d awaiting confirmation,"
                     " %d retrying%s; since start %d sent, %d confirmed%s", (totals[0] - self._summarised[0]) / span,
                     (totals[1] - self._summarised[1]) / span / 2**20, span, queued, waiting, retrying, held,
                     totals[0], totals[2], lost)
        self._summary_at, self._summarised = now, totals

    def _warn_if_hold_full(self, now: float) -> None:
        """The source waits for room (``hold.when_full: block``): say so, at most every 10 s."""
        hold = self.config.hold
        if hold.when_full != "block" or self.handoff.held + self.config.chunksize < hold.max_bytes:
            return
        if now - self._hold_warned_at > 10:
            self._hold_warned_at = now
            log.warning("the hold is full: %.0f MiB of in-memory data await storage confirmation"
                        " (sender.hold.max_bytes); the source waits", self.handoff.held / 2**20)

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

    # -- confirmations ---------------------------------------------------------------------------------

    def _take_confirmations(self, sock: zmq.Socket, member: int) -> None:
        """Every confirmation waiting; the files they complete are recorded together (one ledger statement)."""
        done: list[InFlight] = []
        try:
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                resend, confirmed = self.link.on_message(frames, member)
                for event in resend:
                    self._enqueue(event, force=True)
                done += confirmed
        finally:
            self._confirmed(done)

    def _expire(self, now: float) -> None:
        resend, overdue = self.link.expire(now)
        for event in resend:
            self._enqueue(event, force=True)
        for fid, attempts in overdue:
            # NOTE: reported (hidra ledger lists it), never given up: it goes out again until it is confirmed.
            self.ledger.set_state(fid, UNCONFIRMED)
            if attempts == self.config.storage.max_attempts:
                self.stats["unconfirmed"] += 1
