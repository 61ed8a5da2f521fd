"""Connections to analysis clients: one PUSH per socket id, with budgets, liveness and counters.

Clients are best effort (hidra4-protocol.md §5, §9 D6/D7). Each target has a budget in messages and bytes that
the sender may have handed to ZeroMQ but the kernel has not yet taken (tracked with ``MessageTracker``); a
file is admitted whole or skipped, never cut. ZMTP heartbeats drop dead peers and the socket monitor tells
when; a target disconnected longer than the registration TTL is expired.
"""
from __future__ import annotations

import builtins
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["ClientTarget", "ClientTargets"]

log = logging.getLogger(__name__)

_MONITORED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED


@dataclass
class ClientTarget:
    socket_id: str
    socket: zmq.Socket
    monitor: zmq.Socket
    connected: bool = False
    down_since: float = field(default_factory=time.monotonic)
    last_seen: float = 0.0
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    abandoned: int = 0
    queued_messages: int = 0
    queued_bytes: int = 0
    progress_at: float = field(default_factory=time.monotonic)  # last time a queued message went out
    cut_off: int = 0
    _trackers: deque[tuple[zmq.MessageTracker, int]] = field(default_factory=deque)

    def settle(self) -> None:
        """Forget messages the kernel has taken."""
        moved = False
        while self._trackers and self._trackers[0][0].done:
            _tracker, size = self._trackers.popleft()
            self.queued_messages -= 1
            self.queued_bytes -= size
            moved = True
        if moved:
            self.progress_at = time.monotonic()

    def send(self, meta: builtins.bytes, payload: Any, size: int) -> bool:
        try:
            tracker: Any = self.socket.send_multipart([meta, payload], flags=zmq.NOBLOCK, copy=False, track=True)
        except zmq.Again:
            return False
        if not self._trackers:
            self.progress_at = time.monotonic()  # the stall clock starts with the first queued message
        self._trackers.append((tracker, size))
        self.queued_messages += 1
        self.queued_bytes += size
        self.bytes += size
        return True

    def describe(self) -> dict[str, Any]:
        self.settle()
        return {"id": self.socket_id, "connected": self.connected, "files": self.files, "bytes": self.bytes,
                "skipped": self.skipped, "abandoned": self.abandoned, "cut_off": self.cut_off,
                "queued_messages": self.queued_messages,
                "queued_bytes": self.queued_bytes,
                "last_seen_s_ago": round(time.monotonic() - self.last_seen, 3) if self.last_seen else None}


class ClientTargets:
    """Owns every client data socket (router thread only)."""

    def __init__(self, endpoints: Any, budget_messages: int, budget_bytes: int, ttl_s: float,
                 stall_timeout_s: float) -> None:
        self.endpoints = endpoints
        self.budget_messages = budget_messages
        self.budget_bytes = budget_bytes
        self.ttl_s = ttl_s
        self.stall_timeout_s = stall_timeout_s
        self.targets: dict[str, ClientTarget] = {}
        #: socket id -> the CURVE public key (Z85) of the client that registered it: its data socket's server key
        self.keys: dict[str, bytes] = {}
        self.poller: zmq.Poller | None = None

    def sync(self, wanted: Iterable[str]) -> None:
        """Open connections to new ids and close the ones no registration names any more."""
        wanted = set(wanted)
        for socket_id in [i for i in self.targets if i not in wanted]:
            self._close(self.targets.pop(socket_id))
            self.keys.pop(socket_id, None)
        for socket_id in wanted - set(self.targets):
            self.targets[socket_id] = self._open(socket_id)

    def room_for(self, target: ClientTarget, size: int) -> bool:
        """Can one more chunk of a file already started go to ``target`` without passing its budget?"""
        target.settle()
        return target.queued_messages == 0 or (target.queued_bytes + size <= self.budget_bytes
                                               and target.queued_messages < self.budget_messages)

    def cut_stalled(self, now: float) -> list[str]:
        """Targets with queued data and no progress for ``stall_timeout_s``: drop their queue, reconnect.

        A peer that stopped reading (SIGSTOP, a hung analysis) keeps its TCP connection and may answer
        keepalives, so neither heartbeats nor the monitor notice it; its queued chunks would stay pinned in
        the sender's memory. Closing the socket frees them; the new connection serves the client if it resumes.
        """
        cut = []
        for socket_id, target in list(self.targets.items()):
            target.settle()
            if target.queued_messages and now - target.progress_at > self.stall_timeout_s:
                log.warning("client target %s: no progress for %.0f s; dropping its %d queued messages (%d bytes)"
                            " and reconnecting", socket_id, now - target.progress_at, target.queued_messages,
                            target.queued_bytes)
                fresh = self._open(socket_id)
                fresh.files, fresh.bytes, fresh.skipped = target.files, target.bytes, target.skipped
                fresh.abandoned, fresh.cut_off = target.abandoned, target.cut_off + 1
                self._close(target)
                self.targets[socket_id] = fresh
                cut.append(socket_id)
        return cut

    def _open(self, socket_id: str) -> ClientTarget:
        host, _, port = socket_id.rpartition(":")
        # NOTE: HWM above the budget: admission is decided by the budget, so an admitted file never meets
        # a full queue half-way.
        monitors: list[zmq.Socket] = []
        sock = self.endpoints.open(zmq.PUSH, f"tcp://{host}:{port}", bind=False, hwm=self.budget_messages + 16,
                                   prepare=lambda s: monitors.append(s.get_monitor_socket(_MONITORED)),
                                   name="client_data", server_key=self.keys.get(socket_id))
        # NOTE: pyzmq copies frames under 64 KiB even with copy=False, and their trackers finish at once;
        # the budget needs every message tracked until libzmq has written it out.
        sock.copy_threshold = 0
        monitor = monitors[0]
        target = ClientTarget(socket_id, sock, monitor)
        if self.poller is not None:
            self.poller.register(monitor, zmq.POLLIN)
        log.info("client target %s: connecting", socket_id)
        return target

    def _close(self, target: ClientTarget) -> None:
        if self.poller is not None:
            self.poller.unregister(target.monitor)
        target.socket.disable_monitor()
        target.monitor.close(linger=0)
        target.socket.close(linger=0)
        log.info("client target %s: closed (%d files, %d skipped)", target.socket_id, target.files, target.skipped)

    def close(self) -> None:
        for target in self.targets.values():
            self._close(target)
        self.targets.clear()

    def watch(self, poller: zmq.Poller) -> None:
        self.poller = poller
        for target in self.targets.values():
            poller.register(target.monitor, zmq.POLLIN)

    def on_ready(self, ready: dict[Any, int]) -> None:
        for target in self.targets.values():
            if target.monitor in ready:
                self._events(target)

    def _events(self, target: ClientTarget) -> None:
        while target.monitor.poll(0):
            event = recv_monitor_message(target.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                target.connected = True
                target.last_seen = time.monotonic()
                log.info("client target %s: connected", target.socket_id)
            elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED) and target.connected:
                target.connected = False
                target.down_since = time.monotonic()
                log.warning("client target %s: disconnected", target.socket_id)

    def connected(self, socket_id: str) -> bool:
        target = self.targets.get(socket_id)
        return target is not None and target.connected

    def admits(self, socket_id: str, messages: int, size: int) -> bool:
        target = self.targets.get(socket_id)
        if target is None:
            return False
        target.settle()
        if target.queued_messages == 0:
            target.last_seen = time.monotonic() if target.connected else target.last_seen
        return (target.queued_messages + messages <= self.budget_messages
                and (target.queued_bytes + size <= self.budget_bytes or target.queued_bytes == 0))

    def expired(self, now: float) -> list[str]:
        """Ids disconnected for longer than the TTL (never connected counts from registration)."""
        return [i for i, t in self.targets.items() if not t.connected and now - t.down_since > self.ttl_s]

    def describe(self) -> list[dict[str, Any]]:
        return [t.describe() for t in self.targets.values()]
