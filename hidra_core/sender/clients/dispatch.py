"""Analysis clients in the sender: the com (REP) and request (PULL) sockets, and who gets each file.

Runs inside the sender's router loop (one thread owns every socket here). Storage is served first and
blocks; clients only ever get what their budget admits, decided once per file before its first chunk.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from hidra_core.config import ClientsConfig
from hidra_core.sender.clients.hosts import AccessPolicy, HostResolver
from hidra_core.sender.clients.registry import DATA, Member, Registry
from hidra_core.sender.clients.signals import SignalHandler
from hidra_core.sender.clients.targets import ClientTarget, ClientTargets

__all__ = ["ClientDispatcher", "Delivery"]

log = logging.getLogger(__name__)


def _peer(frames: list[zmq.Frame]) -> str | None:
    """The peer's IP address, as libzmq reports it for the first frame of a message."""
    peer = frames[0].get("Peer-Address") if frames else None
    return peer if isinstance(peer, str) else None


#: the longest message the request port takes: ``[b"NEXT" or b"CANCEL", b"host:port"]``
MAX_REQUEST_BYTES = 4096


def _small_requests(sock: zmq.Socket) -> None:
    # NOTE: its high-water mark queues 10,000 requests: of any size, a hostile peer could park gigabytes there;
    # libzmq drops the connection of a peer that sends a longer message
    sock.maxmsgsize = MAX_REQUEST_BYTES


def _user(frames: list[zmq.Frame]) -> bytes | None:
    """The peer's CURVE public key (Z85), the User-Id the ZAP handler gave it; None on a plain socket."""
    try:
        user = frames[0].get("User-Id") if frames else None
    except zmq.ZMQError:
        return None
    return user.encode() if isinstance(user, str) and len(user) == 40 else None


@dataclass
class Delivery:
    target: ClientTarget
    member: Member
    broken: bool = False  # a chunk could not be queued: the rest of this file is not sent to it


class ClientDispatcher:
    def __init__(self, config: ClientsConfig, endpoints: Any, version: str, storing: bool,
                 authorize: Callable[[str, dict[str, Any]], bool | None] | None = None) -> None:
        self.config = config
        self.endpoints = endpoints
        self.resolver = HostResolver(config.lookup_timeout_s)
        self.policy = AccessPolicy(self.resolver, config.whitelist, config.admin_hosts, config.allow_foreign_targets,
                                   authorize)
        self.registries = {"streams": Registry("streams"), "queries": Registry("queries")}
        self.signals = SignalHandler(version, self.registries, self.policy, self.resolver, storing, self.status)
        self.targets = ClientTargets(endpoints, config.budget_messages, config.budget_bytes, config.registration_ttl_s,
                                     config.stall_timeout_s)
        self.com: zmq.Socket | None = None
        self.request: zmq.Socket | None = None
        self.shim: zmq.Socket | None = None
        self.expired = 0

    @property
    def active(self) -> bool:
        return self.com is not None

    def open(self, poller: zmq.Poller) -> None:
        if not self.config.enabled or self.config.whitelist == []:
            log.info("analysis clients disabled (clients.enabled is false or the whitelist is empty)")
            return
        self.com = self.endpoints.open(zmq.REP, self.config.com, bind=True, hwm=1000, name="com")
        self.request = self.endpoints.open(zmq.PULL, self.config.request, bind=True, hwm=10_000,
                                           prepare=_small_requests, name="request")
        poller.register(self.com, zmq.POLLIN)
        poller.register(self.request, zmq.POLLIN)
        if self.config.control_shim is not None:
            self.shim = self.endpoints.open(zmq.REP, self.config.control_shim, bind=True, hwm=100,
                                           name="control_shim")
            poller.register(self.shim, zmq.POLLIN)
        self.targets.watch(poller)

    def bound(self) -> str:
        if self.com is None or self.request is None:
            return "clients disabled"
        shim = f", control shim {self.shim.getsockopt_string(zmq.LAST_ENDPOINT)}" if self.shim is not None else ""
        return (f"com {self.com.getsockopt_string(zmq.LAST_ENDPOINT)}, "
                f"request {self.request.getsockopt_string(zmq.LAST_ENDPOINT)}{shim}")

    def close(self) -> None:
        self.targets.close()
        for sock in (self.com, self.request, self.shim):
            if sock is not None:
                sock.close(linger=0)

    # -- requests ---------------------------------------------------------------------------------------

    def on_ready(self, ready: dict[Any, int]) -> None:
        if self.com is not None and self.com in ready:
            self._signals()
        if self.request is not None and self.request in ready:
            self._requests()
        if self.shim is not None and self.shim in ready:
            self.shim.send_multipart(self._control(self.shim.recv_multipart()))
        self.targets.on_ready(ready)

    def _signals(self) -> None:
        assert self.com is not None
        while True:
            try:
                frames = self.com.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            peer, user = _peer(frames), _user(frames)
            before = self.registries["streams"].ids() | self.registries["queries"].ids()
            reply = self.signals.handle([f.bytes for f in frames], peer)
            self.com.send_multipart(reply)
            if user is not None:  # NOTE(CURVE): the sender connects to a new target with its registrant's key
                for socket_id in (self.registries["streams"].ids() | self.registries["queries"].ids()) - before:
                    self.targets.keys[socket_id] = user
            self.targets.sync(self.registries["streams"].ids() | self.registries["queries"].ids())

    def _requests(self) -> None:
        assert self.request is not None
        queries = self.registries["queries"]
        while True:
            try:
                frames = self.request.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break  # NOTE: not return: the targets follow what these requests changed, below
            peer = _peer(frames)
            if len(frames) != 2 or frames[0].bytes not in (b"NEXT", b"CANCEL"):
                log.info("ignoring malformed request from %s", peer or "local")
                continue
            try:
                socket_id = self.signals.canonical_id(frames[1].bytes.decode())
            except Exception:
                log.info("ignoring request with malformed socket id from %s", peer or "local")
                continue
            # NOTE(D4): only the host named in the id may ask or cancel for it.
            if not self.policy.target_allowed(socket_id.rpartition(":")[0], peer):
                log.warning("ignoring %s for %s from %s", frames[0].bytes.decode(), socket_id, peer)
                continue
            if frames[0].bytes == b"NEXT":
                queries.next(socket_id)
            else:
                queries.cancel(socket_id)
        self.targets.sync(self.registries["streams"].ids() | queries.ids())

    def _control(self, frames: list[bytes]) -> list[bytes]:
        """The read-only 4.x control-server shim (hidra4-protocol.md §8): ports and instances, nothing else."""
        assert self.com is not None and self.request is not None
        port = lambda sock: int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rpartition(":")[2])  # noqa: E731
        wanted = self.config.detector_id
        if frames == [b"IS_ALIVE"]:
            return [b"OK"]
        if len(frames) == 4 and frames[0] in (b"get", b"do"):
            det = frames[2].decode(errors="replace")
            if wanted is not None and det != wanted:
                return [b"ERROR"]
            if frames[0] == b"get" and frames[3] in (b"com_port", b"request_port"):
                return [str(port(self.com if frames[3] == b"com_port" else self.request)).encode()]
            if frames[0] == b"do" and frames[3] == b"get_instances":
                return [json.dumps([wanted or det]).encode()]
        log.info("control shim refused %r (read-only: ports and instances only)", frames[:1])
        return [b"ERROR"]

    # -- per file ---------------------------------------------------------------------------------------

    def plan(self, basename: str, size: int, chunks: int) -> list[Delivery]:
        """Who gets this file: one member per stream set, the head request of each query set."""
        if not self.registries["streams"].sets and not self.registries["queries"].sets:
            return []
        out: list[Delivery] = []

        def available(member: Member) -> bool:
            messages = chunks if member.delivery == DATA else 1
            nbytes = size if member.delivery == DATA else 0
            return self.targets.admits(member.socket_id, messages, nbytes)

        streams = self.registries["streams"]
        for s in streams.sets:
            member = streams.pick_stream(s, basename, lambda m: self.targets.connected(m.socket_id) and available(m))
            if member is not None:
                out.append(Delivery(self.targets.targets[member.socket_id], member))
            elif s.members:
                self._skipped(s.members[s.pointer % len(s.members)], basename)
        for s in self.registries["queries"].sets:
            member = Registry.pick_query(s, basename, available)
            if member is not None:
                out.append(Delivery(self.targets.targets[member.socket_id], member))
            elif s.requests and s.requests[0].matches(basename):
                self._skipped(s.requests[0], basename)
        return out

    def _skipped(self, member: Member, basename: str) -> None:
        target = self.targets.targets.get(member.socket_id)
        if target is not None and member.matches(basename):
            target.skipped += 1

    def send_chunk(self, deliveries: list[Delivery], meta: bytes, payload: Any, last: bool) -> None:
        size = len(payload)
        for d in deliveries:
            if d.member.delivery != DATA or d.broken:
                continue
            # NOTE(D6): a file was admitted whole, but a client that falls behind mid-file must not make the
            # sender hold more than its budget: the rest of that file is abandoned for it, and counted.
            if d.target is not self.targets.targets.get(d.target.socket_id) or not self.targets.room_for(
                    d.target, size) or not d.target.send(meta, payload, size):
                d.broken = True
                d.target.abandoned += 1
                log.info("client %s fell behind mid-file; rest of the file abandoned for it", d.target.socket_id)
            elif last:
                d.target.files += 1

    def send_metadata(self, deliveries: list[Delivery], meta: bytes) -> None:
        for d in deliveries:
            if d.member.delivery != DATA and d.target.send(meta, b"null", 0):
                d.target.files += 1

    def housekeeping(self, now: float) -> None:
        self.targets.cut_stalled(now)
        ttl = self.config.registration_ttl_s
        gone = set(self.targets.expired(now))
        connected = self.targets.connected
        gone |= set(self.registries["queries"].expire_idle_queries(now, ttl, connected))
        if not gone:
            return
        for registry in self.registries.values():
            registry.stop(gone, None)
        self.expired += len(gone)
        log.warning("expired client registrations (no connection for %.0f s): %s", ttl, ", ".join(sorted(gone)))
        self.targets.sync(self.registries["streams"].ids() | self.registries["queries"].ids())

    def status(self) -> dict[str, Any]:
        sets = []
        for kind, registry in self.registries.items():
            for s in registry.sets:
                sets.append({"kind": kind, "appid": s.appid, "members": [m.socket_id for m in s.members],
                             "delivery": sorted({m.delivery for m in s.members}), "open_requests": len(s.requests),
                             "age_s": round(time.monotonic() - s.registered, 1)})
        return {"registrations": sets, "targets": self.targets.describe(), "expired": self.expired}
