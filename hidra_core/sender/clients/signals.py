"""The com port's request handler (hidra4-protocol.md §3): validate, authorise, change the registries, reply.

Every request gets a reply (REQ/REP is lock-step: an unanswered request wedges the client). ``handle`` takes
the four frames and the requester's address and returns the reply frames; it never raises.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

from hidra_core.errors import shown
from hidra_core.sender.clients.hosts import AccessPolicy, HostResolver
from hidra_core.sender.clients.registry import DATA, METADATA, Member, Registry, compile_pattern, suffixes_to_pattern

__all__ = ["SignalHandler"]

log = logging.getLogger(__name__)

NO_VALID_SIGNAL = [b"NO_VALID_SIGNAL"]
NO_VALID_HOST = [b"NO_VALID_HOST"]
NO_OPEN_CONNECTION_FOUND = [b"NO_OPEN_CONNECTION_FOUND"]
STATUS = "HIDRA_STATUS"  # our extension: registrations and per-target counters as JSON

_STARTS = {"START_STREAM": ("streams", DATA), "START_STREAM_METADATA": ("streams", METADATA),
           "START_QUERY_NEXT": ("queries", DATA), "START_QUERY_NEXT_METADATA": ("queries", METADATA)}
_STOPS = {"STOP_STREAM": "streams", "STOP_STREAM_METADATA": "streams",
          "STOP_QUERY_NEXT": "queries", "STOP_QUERY_NEXT_METADATA": "queries"}


class _Invalid(Exception):
    """The request is malformed: reply NO_VALID_SIGNAL."""


class SignalHandler:
    def __init__(self, version: str, registries: dict[str, Registry], policy: AccessPolicy,
                 resolver: HostResolver, storing: bool, status: Callable[[], Any]) -> None:
        self.version = version
        self.registries = registries
        self.policy = policy
        self.resolver = resolver
        self.storing = storing
        self.status = status

    def canonical_id(self, text: str) -> str:
        """``host:port`` with the host as FQDN; the same function for targets, NEXT and CANCEL."""
        host, sep, port = text.rpartition(":")
        # NOTE: ASCII digits only, five at most: int() refuses "²" and numbers of over 4,300 digits with ValueError
        if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
            raise _Invalid(f"socket id {shown(text)} is not host:port")
        return f"{self.resolver.fqdn(host)}:{int(port)}"

    def handle(self, frames: list[bytes], peer: str | None) -> list[bytes]:
        try:
            # NOTE: a 4.x client gives up after 1 s; unknown host names must not eat that window.
            with self.resolver.budget(0.6):
                return self._handle(frames, peer)
        except _Invalid as exc:
            log.info("com request refused (NO_VALID_SIGNAL) from %s: %s", peer or "local", exc)
            return NO_VALID_SIGNAL
        except Exception:  # a bug here must still answer the client
            log.exception("com request from %s failed", peer or "local")
            return NO_VALID_SIGNAL

    def _handle(self, frames: list[bytes], peer: str | None) -> list[bytes]:
        if len(frames) != 4:
            raise _Invalid(f"{len(frames)} frames instead of 4")
        try:
            version, appid, signal = (f.decode() for f in frames[:3])
            targets = json.loads(frames[3])
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # NOTE: RecursionError: nested too deeply
            raise _Invalid(f"undecodable frames: {exc}") from None
        if not isinstance(targets, list) or not all(
                isinstance(t, list) and t and isinstance(t[0], str) and ":" in t[0] for t in targets):
            raise _Invalid("targets are not a list of [\"host:port\", prio, pattern]")
        if version and version.split(".")[0] != self.version.split(".")[0]:
            return [b"VERSION_CONFLICT", self.version.encode()]
        if signal != "GET_VERSION" and not self.policy.requester_allowed(peer):
            log.warning("com request %s refused: requester %s is not allowed", signal, peer)
            return NO_VALID_HOST
        for target in targets:
            host = target[0].rpartition(":")[0]
            if not self.policy.target_allowed(host, peer):
                log.warning("com request %s refused: target %s not allowed for requester %s", signal, target[0], peer)
                return NO_VALID_HOST
        if signal == "GET_VERSION":
            return [b"GET_VERSION", self.version.encode()]
        if signal in _STARTS:
            return self._start(signal, appid, targets)
        force = signal.startswith("FORCE_")
        kind = _STOPS.get(signal[len("FORCE_"):] if force else signal)
        if kind is not None:
            if force and not self.policy.admin(peer):
                log.warning("%s refused: %s is not an admin host", signal, peer)
                return NO_VALID_HOST
            ids = [self.canonical_id(t[0]) for t in targets]
            removed = self.registries[kind].stop(ids, None if force else appid)
            return [signal.encode()] if removed else NO_OPEN_CONNECTION_FOUND
        if signal == STATUS:
            return [STATUS.encode(), json.dumps(self.status()).encode()]
        raise _Invalid(f"unknown signal {shown(signal)}")

    def _start(self, signal: str, appid: str, targets: list[list[Any]]) -> list[bytes]:
        kind, delivery = _STARTS[signal]
        if delivery == METADATA and not self.storing:
            return [b"STORING_DISABLED", self.version.encode()]
        if not targets:
            raise _Invalid(f"{signal} without targets")
        members = [self._member(t, delivery) for t in targets]
        self.registries[kind].start(appid, members)
        log.info("%s registered for app %s: %s", signal, appid, ", ".join(m.socket_id for m in members))
        return [signal.encode()]

    def _member(self, target: list[Any], delivery: str) -> Member:
        prio = target[1] if len(target) > 1 else 1
        if isinstance(prio, bool) or not isinstance(prio, int) or prio < 0:
            raise _Invalid(f"priority {shown(prio)} is not an integer >= 0")
        if prio == 0:
            # NOTE(D4): priority 0 (blocking, lossless) is reserved for configured storage targets.
            log.info("client target %s asked for priority 0; served as best effort (1)", target[0])
            prio = 1
        raw = target[2] if len(target) > 2 else ".*"
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            raw = suffixes_to_pattern(raw)
        if not isinstance(raw, str):
            raise _Invalid(f"pattern {shown(raw)} is neither a regex nor a list of suffixes")
        try:
            pattern = compile_pattern(raw)
        except ValueError as exc:
            raise _Invalid(f"pattern {shown(raw)} refused: {exc}") from None
        return Member(self.canonical_id(target[0]), prio, pattern, delivery)
