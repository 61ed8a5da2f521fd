"""The hand-off from the source thread to the router: events as Python objects (never pickled, payloads never
copied), bounded in bytes.

An event that carries its payload (a frame of a stream) cannot be read again, so its bytes count against the bound
from the moment the source hands it over until the router releases them: once the storage receiver confirmed the
copy, or the event ended otherwise (failed, refused). Past the bound the source either waits (``block``: the
back-pressure reaches the detector, whose own buffer holds the data) or drops the new event (``drop``): counted,
logged and recorded in the ledger by the router, never silent. Events waiting for the router are bounded in
number too, so a flood of file events waits in the source (inotify's queue, a rescan) rather than in memory.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from typing import Any, Iterator

import zmq

from hidra_core.types import FileEvent

__all__ = ["Handoff"]

log = logging.getLogger(__name__)

#: events handed over and not yet taken by the router
MAX_WAITING = 10_000
_WAIT_S = 0.1


class Handoff:
    """Shared by one source thread (``put``) and the router (``take``, ``release``); a PAIR rings the router."""

    def __init__(self, context: zmq.Context, max_bytes: int, when_full: str, stop: Any) -> None:
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.stop = stop
        self.held = 0  # bytes of events handed over and not yet released
        self.dropped = 0
        self._cond = threading.Condition()
        self._events: deque[FileEvent] = deque()
        self._dropped: deque[FileEvent] = deque()  # payloads already let go: only what the ledger needs
        self._blocked_since: float | None = None
        self.endpoint = f"inproc://hidra-handoff-{id(self):x}"
        self.socket = context.socket(zmq.PAIR)  # the router's end
        self.socket.linger = 0
        self.socket.bind(self.endpoint)

    def connect(self, context: zmq.Context) -> zmq.Socket:
        """The source thread's end of the doorbell (created in, and owned by, that thread)."""
        sock = context.socket(zmq.PAIR)
        sock.linger = 0
        sock.connect(self.endpoint)
        return sock

    # -- the source thread ----------------------------------------------------------------------------

    def put(self, events: list[FileEvent], bell: zmq.Socket | None = None) -> None:
        """Hand events over in order; waits (``block``) or drops (``drop``) while the bound is reached. Without a
        ``bell`` (a backfill's thread: the PAIR takes one peer) the router finds them at its next poll."""
        for event in events:
            cost = event.held_bytes
            with self._cond:
                if self._room(cost, event):
                    self.held += cost
                    self._events.append(event)
                else:
                    self._drop(event)
            if bell is not None:
                _ring(bell)

    def _room(self, cost: int, event: FileEvent) -> bool:
        """Wait for room; False when the event must be dropped. NOTE: one event larger than the whole bound still
        goes when nothing else is held, so that no size of frame stalls the stream forever."""
        while (self.held and self.held + cost > self.max_bytes) or len(self._events) >= MAX_WAITING:
            if self.when_full == "drop" and event.payload is not None:
                return False
            if self.stop.is_set():
                return True  # NOTE: stopping: the router drains what it can and the ledger keeps the rest
            self._cond.wait(_WAIT_S)
        return True

    def _drop(self, event: FileEvent) -> None:
        self.dropped += 1
        self._dropped.append(dataclasses.replace(event, payload=None))

    # -- the router -----------------------------------------------------------------------------------

    def take(self, limit: int) -> Iterator[FileEvent]:
        """Up to ``limit`` events in the order handed over."""
        while self.socket.poll(0):
            self.socket.recv()
        events = self._events
        try:
            for _ in range(limit):
                try:
                    yield events.popleft()
                except IndexError:
                    return
        finally:
            with self._cond:
                self._cond.notify_all()  # room for a source waiting on the number of events

    def take_dropped(self) -> list[FileEvent]:
        out: list[FileEvent] = []
        while self._dropped:
            out.append(self._dropped.popleft())
        return out

    def release(self, size: int) -> None:
        """The router is done with an event's bytes (sent and confirmed, or given up)."""
        with self._cond:
            self.held -= size
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._events)

    def close(self) -> None:
        self.socket.close(linger=0)


def _ring(sock: zmq.Socket) -> None:
    try:
        sock.send(b"", zmq.NOBLOCK)
    except zmq.ZMQError:  # a full pipe already holds doorbells
        pass
