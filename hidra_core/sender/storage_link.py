"""What the sender knows about its storage receiver: is it there, and which files await its confirmation.

Bookkeeping only (no sockets, no ledger): the sender's router loop feeds it confirmation-socket messages and
monitor events and acts on what it returns: files to send again, files confirmed with a storage proof.
"""
from __future__ import annotations

import heapq
import logging
import math
import time
from typing import TYPE_CHECKING, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from hidra_core.errors import ProtocolError
from hidra_core.sender.outgoing import InFlight
from hidra_core.protocol.confirmation import HEARTBEAT_TOPIC, decode_confirmation
from hidra_core.types import FileEvent

if TYPE_CHECKING:  # pragma: no cover
    from hidra_core.config import StorageTarget
    from hidra_core.sender.outgoing import Outgoing

__all__ = ["StorageLink"]

log = logging.getLogger(__name__)

_BEACON_TIMEOUT_S = 3.0
# NOTE: after connecting, wait this long for our receiver's beacon before assuming a receiver without one (a
# HiDRA 4.x datareceiver); the grace also lets the confirmation subscription reach its PUB before the first
# file. Confirmations without a checksum never allow removal unless accept_legacy_confirmations is set.
_BEACON_GRACE_S = 2.0
_RETRY_REPORT_S = 10.0  # at most one retry WARNING this often
_EARLY_FILES = 64  # files whose chunk confirmations came before their last chunk went out (see _early)


class _Member:
    """One storage receiver of the group: is it there (its beacon, or a connection to a receiver without one)."""

    def __init__(self, index: int, data: str) -> None:
        self.index, self.data = index, data
        self.receiver: bytes | None = None  # the instance id its beacon carries
        self.beacon_at = 0.0
        self.connected_at: float | None = None
        self.was_up = False
        self.lost = False  # went down and has not come back yet
        self.broken_at = -math.inf  # when it was last lost, restarted or disconnected

    def up(self, now: float) -> bool:
        """Send while its beacon is fresh, or (after a grace) to a connected receiver without a beacon."""
        if self.receiver is not None:
            return now - self.beacon_at < _BEACON_TIMEOUT_S
        return self.connected_at is not None and now - self.connected_at > _BEACON_GRACE_S


class StorageLink:
    def __init__(self, config: StorageTarget) -> None:
        self.config = config
        self.members = [_Member(i, data) for i, (data, _conf) in enumerate(config.members)]
        self.live: list[int] = []  # members up at the last poll()
        self.in_flight: dict[str, InFlight] = {}
        self.lanes: dict[str, int] = {}  # file_id -> the pipeline it went out through, until it is confirmed
        self.attempts: dict[str, int] = {}
        self.retrying: set[str] = set()  # files that ran out of time at least once and are not confirmed yet
        self._due: list[tuple[float, str, float]] = []  # heap of (deadline, file_id, sent_at); stale entries skipped
        self._retried: set[str] = set()  # files sent again since the last retry WARNING
        self._overdue: set[str] = set()  # ... and those of them past max_attempts
        self._next_wait: float | None = None  # the shortest confirmation timeout of those sends
        self._next_report = 0.0
        # NOTE: a 4.x receiver confirms each chunk as soon as it is written, often before the file's last chunk
        # left this sender (chunks come from the fetch worker over several loop turns): those confirmations are
        # kept here, for the few files still being sent, and count once the file is in flight.
        self._early: dict[str, set[int]] = {}

    def poll(self, now: float) -> tuple[list[int], list[FileEvent]]:
        """``(the members up, files to send again)``: a member that went down while another is up has its
        unconfirmed files sent to the others; a lone receiver's wait for it (confirmations may still come); a
        member back after that has its unconfirmed files sent to it again."""
        live: list[int] = []
        down: list[_Member] = []
        back: list[_Member] = []
        for member in self.members:
            up = member.up(now)
            if member.was_up and not up:
                down.append(member)
                member.lost, member.broken_at = True, now
                log.warning("storage receiver at %s lost (no beacon for %.0f s, or disconnected); %s", member.data,
                            _BEACON_TIMEOUT_S, "its files go to the others of the group" if len(self.members) > 1
                            else "files wait for it")
            elif up and member.lost:
                back.append(member)
            member.was_up = up
            if up:
                live.append(member.index)
        self.live = live
        resend = self._returned(back)
        if not (down and live):
            return live, resend
        gone = {member.index for member in down}
        return live, resend + self._take_back(lambda flight: flight.member in gone)

    def _returned(self, back: list[_Member]) -> list[FileEvent]:
        """Files in flight to members that are back (the same instance, after a cut link) go out again.

        NOTE: confirmations it published while unreachable are dropped (PUB), as are chunks queued in the dying
        connection; without this those files would wait for their confirmation timeout. Copies are idempotent.
        """
        if not back:
            return []
        returned = {member.index for member in back}
        for member in back:
            member.lost = False
        resend = self._take_back(lambda flight: flight.member in returned)
        log.warning("storage receiver at %s is back: sending %d unconfirmed files again",
                    ", ".join(member.data for member in back), len(resend))
        return resend

    def _take_back(self, which: Callable[[InFlight], bool]) -> list[FileEvent]:
        """Files in flight that go out again now: out of the books until they are sent again."""
        flights = [flight for flight in self.in_flight.values() if which(flight)]
        for flight in flights:
            del self.in_flight[flight.event.file_id]
        return [flight.event for flight in flights]

    def on_monitor(self, member: int, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.members[member].connected_at = time.monotonic()
            elif event == zmq.EVENT_DISCONNECTED:
                self.members[member].connected_at = None
                self.members[member].broken_at = time.monotonic()

    def sent(self, out: Outgoing, member: int = 0, lane: int | None = None) -> tuple[int, InFlight | None]:
        """Record a file completely handed to the transport for ``member``: ``(how often it has been sent, the
        flight if the confirmations that came while it was being sent already complete it)``."""
        fid = out.event.file_id
        self.attempts[fid] = attempts = self.attempts.get(fid, 0) + 1
        now = time.monotonic()
        flight = InFlight(out.event, out.stat, out.checksum, out.chunk_count, now, member)
        if lane is not None:
            self.lanes[fid] = lane
        earlier = self.in_flight.get(fid)
        if earlier is not None and earlier.checksum == out.checksum:  # the same content: its confirmations count
            flight.confirmed |= earlier.confirmed
            flight.proof = earlier.proof
        flight.confirmed |= self._early.pop(fid, set())
        self.in_flight[fid] = flight
        if self._complete(flight):
            return attempts, flight
        # NOTE: a file whose sending spanned a break of its member (a cut link, a restart) may have lost its first
        # chunks with the old connection, and the receiver then drops the rest: it is due again at once.
        spanned = self.members[member].broken_at >= out.started
        heapq.heappush(self._due, (now if spanned else now + self.backoff(attempts), fid, now))
        if len(self._due) > 2 * len(self.in_flight) + 1000:  # confirmed files leave stale entries behind
            self._due = [entry for entry in self._due if self._current(entry)]
            heapq.heapify(self._due)
        return attempts, None

    def on_message(self, frames: list[bytes], member: int = 0) -> tuple[list[FileEvent], list[InFlight]]:
        """A message from ``member``'s confirmation socket: ``(files to send again, files now confirmed)``."""
        if frames[0] == HEARTBEAT_TOPIC:
            return self._beacon(self.members[member], frames), []
        try:
            conf = decode_confirmation(frames)
        except ProtocolError as exc:
            log.warning("ignoring confirmation: %s", exc)
            return [], []
        flight = self.in_flight.get(conf.file_id)
        if flight is None:
            if conf.checksum is None and 0 <= conf.chunk_number:
                self._early.setdefault(conf.file_id, set()).add(conf.chunk_number)
                while len(self._early) > _EARLY_FILES:
                    del self._early[next(iter(self._early))]
            return [], []
        if conf.checksum is not None:
            if conf.checksum != flight.checksum:
                log.warning("%s: receiver stored checksum %s, sent %s; sending again", conf.file_id, conf.checksum,
                            flight.checksum)
                return [flight.event], []
            flight.proof = True
        if 0 <= conf.chunk_number < flight.chunk_count:
            flight.confirmed.add(conf.chunk_number)
        return [], [flight] if self._complete(flight) else []

    def _complete(self, flight: InFlight) -> bool:
        """Whether every chunk of ``flight`` is confirmed with a proof; if so, it leaves the books."""
        if len(flight.confirmed) < flight.chunk_count or not (flight.proof or self.config.accept_legacy_confirmations):
            return False
        fid = flight.event.file_id
        del self.in_flight[fid]
        self.attempts.pop(fid, None)
        self.lanes.pop(fid, None)
        if self.retrying:
            self.retrying.discard(fid)
            if not self.retrying:
                log.info("every file sent again has been confirmed")
        return True

    def _beacon(self, member: _Member, frames: list[bytes]) -> list[FileEvent]:
        member.beacon_at = time.monotonic()
        instance = frames[1] if len(frames) > 1 else b""
        if instance == member.receiver:
            return []
        mine = [flight for flight in self.in_flight.values() if flight.member == member.index]
        at = f" at {member.data}" if len(self.members) > 1 else ""
        if member.receiver is not None:
            member.broken_at = member.beacon_at
            member.lost = False  # NOTE: its files go out again here, not once more when poll() sees it back
            log.warning("storage receiver%s restarted: sending %d unconfirmed files again", at, len(mine))
        else:
            log.info("storage receiver%s is up", at)
        member.receiver = instance
        # Whatever went out before this receiver's beacon may have met a predecessor or a late subscription.
        return [flight.event for flight in mine]

    def backoff(self, attempts: int) -> float:
        """How long the ``attempts``-th send of a file waits for its confirmation: doubling, capped."""
        timeout = self.config.confirmation_timeout_s
        return min(timeout * 2.0 ** min(attempts - 1, 62), max(self.config.max_backoff_s, timeout))

    def _current(self, entry: tuple[float, str, float]) -> bool:
        flight = self.in_flight.get(entry[1])
        return flight is not None and flight.sent_at == entry[2]

    def expire(self, now: float) -> tuple[list[FileEvent], list[tuple[str, int]]]:
        """Files unconfirmed for too long: ``(to send again, those of them past max_attempts as (id, attempts))``.

        Nothing is ever given up: a file past ``max_attempts`` is reported, and still sent again.
        """
        resend: list[FileEvent] = []
        overdue: list[tuple[str, int]] = []
        while self._due and self._due[0][0] <= now:
            entry = heapq.heappop(self._due)
            if not self._current(entry):
                continue  # confirmed, or sent again since
            flight = self.in_flight.pop(entry[1])
            attempts = self.attempts.get(entry[1], 1)
            self.retrying.add(entry[1])
            resend.append(flight.event)
            if attempts >= self.config.max_attempts:
                overdue.append((entry[1], attempts))
        if resend:
            self._retried.update(e.file_id for e in resend)
            self._overdue.update(fid for fid, _ in overdue)
            wait = min(self.backoff(self.attempts.get(e.file_id, 1) + 1) for e in resend)
            self._next_wait = min(self._next_wait or wait, wait)
        if self._retried and now >= self._next_report:
            self._report_retries(now)
        return resend, overdue

    def _report_retries(self, now: float) -> None:
        # NOTE: one line per round (at most every _RETRY_REPORT_S), never one per file: a receiver that is down
        # makes every file in flight run out of time, again and again.
        past = ""
        if self._overdue:
            names = ", ".join(heapq.nsmallest(3, self._overdue))
            past = (f"; {len(self._overdue)} of them after {self.config.max_attempts} or more attempts, reported"
                    f" unconfirmed (`hidra ledger`) and still retried, e.g. {names}")
        log.warning("%d files not confirmed by the storage receiver in time: sent again %s, next check %.3g s after"
                    " that%s", len(self._retried), "now" if self.live else "once it is reachable", self._next_wait,
                    past)
        self._retried, self._overdue, self._next_wait = set(), set(), None
        self._next_report = now + _RETRY_REPORT_S
