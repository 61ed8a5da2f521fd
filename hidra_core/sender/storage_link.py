"""What the sender knows about its storage receiver: is it there, and which files await its confirmation.

Bookkeeping only (no sockets, no ledger): the sender's router loop feeds it confirmation-socket messages and
monitor events and acts on what it returns: files to send again, files confirmed with a storage proof.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

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


class StorageLink:
    def __init__(self, config: StorageTarget) -> None:
        self.config = config
        self.in_flight: OrderedDict[str, InFlight] = OrderedDict()  # oldest send first
        self.attempts: dict[str, int] = {}
        self._receiver: bytes | None = None
        self._beacon_at = 0.0
        self._connected_at: float | None = None

    def up(self, now: float) -> bool:
        """Send while our receiver's beacon is fresh, or (after a grace) to a connected one without a beacon."""
        if self._receiver is not None:
            return now - self._beacon_at < _BEACON_TIMEOUT_S
        return self._connected_at is not None and now - self._connected_at > _BEACON_GRACE_S

    def on_monitor(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected_at = time.monotonic()
            elif event == zmq.EVENT_DISCONNECTED:
                self._connected_at = None

    def sent(self, out: Outgoing) -> int:
        """Record a file completely handed to the transport; returns how often it has been sent."""
        fid = out.event.file_id
        self.attempts[fid] = attempts = self.attempts.get(fid, 0) + 1
        self.in_flight.pop(fid, None)
        self.in_flight[fid] = InFlight(out.event, out.stat, out.checksum, out.chunk_count, time.monotonic())
        return attempts

    def on_message(self, frames: list[bytes]) -> tuple[list[FileEvent], list[InFlight]]:
        """A message from the confirmation socket: ``(files to send again, files now confirmed)``."""
        if frames[0] == HEARTBEAT_TOPIC:
            return self._beacon(frames), []
        try:
            conf = decode_confirmation(frames)
        except ProtocolError as exc:
            log.warning("ignoring confirmation: %s", exc)
            return [], []
        flight = self.in_flight.get(conf.file_id)
        if flight is None:
            return [], []
        if conf.checksum is not None:
            if conf.checksum != flight.checksum:
                log.warning("%s: receiver stored checksum %s, sent %s; sending again", conf.file_id, conf.checksum,
                            flight.checksum)
                return [flight.event], []
            flight.proof = True
        if 0 <= conf.chunk_number < flight.chunk_count:
            flight.confirmed.add(conf.chunk_number)
        if len(flight.confirmed) == flight.chunk_count and (flight.proof or self.config.accept_legacy_confirmations):
            del self.in_flight[conf.file_id]
            self.attempts.pop(conf.file_id, None)
            return [], [flight]
        return [], []

    def _beacon(self, frames: list[bytes]) -> list[FileEvent]:
        self._beacon_at = time.monotonic()
        instance = frames[1] if len(frames) > 1 else b""
        if instance == self._receiver:
            return []
        if self._receiver is not None:
            log.warning("storage receiver restarted: sending %d unconfirmed files again", len(self.in_flight))
        else:
            log.info("storage receiver is up")
        self._receiver = instance
        # Whatever went out before this receiver's beacon may have met a predecessor or a late subscription.
        return [flight.event for flight in self.in_flight.values()]

    def expire(self, now: float) -> tuple[list[FileEvent], list[tuple[str, int]]]:
        """Files unconfirmed for too long: ``(to send again, given up as (file_id, attempts))``."""
        resend: list[FileEvent] = []
        given_up: list[tuple[str, int]] = []
        timeout = self.config.confirmation_timeout_s
        while self.in_flight:
            fid, flight = next(iter(self.in_flight.items()))
            if now - flight.sent_at < timeout:
                break
            del self.in_flight[fid]
            if self.attempts.get(fid, 0) >= self.config.max_attempts:
                given_up.append((fid, self.attempts.pop(fid)))
            else:
                log.info("%s: no confirmation after %.0f s; sending again", fid, timeout)
                resend.append(flight.event)
        return resend, given_up
