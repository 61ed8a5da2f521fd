"""Host names for the 4.x com protocol: canonical FQDNs with bounded, cached lookups, and who may do what.

A 4.x client waits only 1 s for a reply, so no lookup may block the signal handler longer than
``lookup_timeout_s``; an answer that comes too late is used next time (it lands in the cache).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

__all__ = ["AccessPolicy", "HostResolver"]

log = logging.getLogger(__name__)

_TTL_S = 300.0
LOCAL = "localhost"


class HostResolver:
    """``fqdn(name)`` and ``addresses(name)``, cached for five minutes, each lookup bounded in time."""

    def __init__(self, timeout_s: float = 0.5) -> None:
        self.timeout_s = timeout_s
        self._cache: dict[tuple[str, str], tuple[float, object]] = {}
        self._lock = threading.Lock()
        self._deadline: float | None = None

    @contextmanager
    def budget(self, seconds: float) -> Iterator[None]:
        """Bound all lookups inside the block together (one request may name several unknown hosts)."""
        self._deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline = None

    def fqdn(self, host: str) -> str:
        host = host.strip().lower()
        return str(self._lookup("fqdn", host, lambda: socket.getfqdn(host).lower(), host))

    def addresses(self, host: str) -> frozenset[str]:
        host = host.strip().lower()
        try:
            return frozenset({str(ipaddress.ip_address(host))})
        except ValueError:
            pass
        return self._lookup("addr", host, lambda: frozenset(i[4][0] for i in socket.getaddrinfo(host, None)),
                            frozenset())  # type: ignore[return-value]

    def _lookup(self, kind: str, host: str, compute: Callable[[], object], fallback: object) -> object:
        key = (kind, host)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        result: list[object] = []

        def run() -> None:
            try:
                value = compute()
            except OSError:
                value = fallback
            with self._lock:
                self._cache[key] = (time.monotonic() + _TTL_S, value)
            result.append(value)

        worker = threading.Thread(target=run, name="hidra-lookup", daemon=True)
        worker.start()
        wait = self.timeout_s
        if self._deadline is not None:
            wait = max(0.0, min(wait, self._deadline - time.monotonic()))
        worker.join(wait)
        if result:
            return result[0]
        log.warning("looking up %s took longer than %.1f s; using %r for now", host, self.timeout_s, fallback)
        return hit[1] if hit is not None else fallback


def _is_loopback(ip: str | None) -> bool:
    if ip is None:  # ipc:// and inproc:// peers are on this machine
        return True
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return False


class AccessPolicy:
    """Checks requesters and target hosts against a whitelist (hidra4-protocol.md §3.2 step 4 and §9 D4)."""

    def __init__(self, resolver: HostResolver, whitelist: Iterable[str] | None, admin_hosts: Iterable[str],
                 allow_foreign_targets: bool,
                 authorize: Callable[[str, dict[str, object]], bool | None] | None = None) -> None:
        self.resolver = resolver
        self.authorize = authorize
        self.whitelist = None if whitelist is None else [h.lower() for h in whitelist]
        self.admin_hosts = [h.lower() for h in admin_hosts]
        self.allow_foreign_targets = allow_foreign_targets
        me = socket.gethostname().lower()
        self._local_names = {LOCAL, me, resolver.fqdn(me)}

    def is_local(self, host: str) -> bool:
        host = host.lower()
        if host in self._local_names:
            return True
        if _looks_like_ip(host):
            return _is_loopback(host) or host in self.resolver.addresses(socket.gethostname())
        return self.resolver.fqdn(host) in self._local_names

    def _host_in(self, host: str, allowed: list[str]) -> bool:
        if LOCAL in allowed and self.is_local(host):
            return True
        fqdn = self.resolver.fqdn(host)
        return host.lower() in allowed or fqdn in {self.resolver.fqdn(a) for a in allowed if a != LOCAL}

    def _peer_in(self, peer: str | None, allowed: list[str]) -> bool:
        if _is_loopback(peer):
            return LOCAL in allowed or any(self.is_local(a) for a in allowed)
        assert peer is not None
        for name in allowed:
            if name == LOCAL:
                if peer in self.resolver.addresses(socket.gethostname()):
                    return True
            elif peer in self.resolver.addresses(name):
                return True
        return self._host_in(self.resolver.fqdn(peer), allowed)

    def _plugin(self, host: str | None, purpose: str, peer: str | None) -> bool | None:
        if self.authorize is None:
            return None
        return self.authorize(host or "localhost", {"purpose": purpose, "peer": peer})

    def requester_allowed(self, peer: str | None) -> bool:
        verdict = self._plugin(peer, "requester", peer)
        if verdict is not None:
            return verdict
        return self.whitelist is None or self._peer_in(peer, self.whitelist)

    def target_allowed(self, host: str, peer: str | None) -> bool:
        verdict = self._plugin(self.resolver.fqdn(host), "target", peer)
        if verdict is False:
            return False
        if verdict is None and self.whitelist is not None and not self._host_in(host, self.whitelist):
            return False
        if self.allow_foreign_targets:
            return True
        if _is_loopback(peer):
            return self.is_local(host)
        return peer in self.resolver.addresses(host)

    def admin(self, peer: str | None) -> bool:
        verdict = self._plugin(peer, "admin", peer)
        return verdict if verdict is not None else self._peer_in(peer, self.admin_hosts)


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
