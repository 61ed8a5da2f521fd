"""A process's CURVE state: its own key pair, the keys allowed per role, the one ZAP handler on its one context,
and the socket options that make a socket a CURVE server or client (or leave it plain where configured)."""
from __future__ import annotations

import logging
import os
import time
from functools import partial
from typing import Any, Callable, Iterable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from hidra_core.errors import ConfigError
from hidra_core.security.config import PLAIN_NAMES, SecurityConfig
from hidra_core.security.keys import KeyProblem, load_pair, public_key
from hidra_core.security.watch import RefusalWatch

__all__ = ["DOMAINS", "Security", "active", "secure_socket"]

log = logging.getLogger(__name__)

#: the ZAP domain (the role whose keys are allowed) of each socket a process binds
DOMAINS = {"data": "senders", "confirmations": "senders", "status": "senders", "com": "clients",
           "request": "clients", "control_shim": "clients", "ingest": "producers"}
#: sockets that are plain exactly when another one is: a client's data socket follows com, where it registered
_PLAIN_AS = {"client_data": "com"}
_REFUSAL_LOG_INTERVAL_S = 10.0
_RECEIVER_SOCKETS = ["data", "confirmations", "status"]
_active: Security | None = None


class _Authenticator(ThreadAuthenticator):
    """The ZAP handler; remembers the address of the request being answered so refusals can name it."""

    address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self.address = msg[3].decode(errors="replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)


class _Allowed:
    """The credentials provider of one ZAP domain: its allowed keys; refusals logged, at most one line per key
    and address every ten seconds."""

    def __init__(self, keys: Iterable[bytes], auth: _Authenticator) -> None:
        self.keys = frozenset(keys)
        self.auth = auth
        self._logged: dict[tuple[str, str], float] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        now, who = time.monotonic(), (key.decode(errors="replace"), self.auth.address)
        if now - self._logged.get(who, -_REFUSAL_LOG_INTERVAL_S) >= _REFUSAL_LOG_INTERVAL_S:
            if len(self._logged) > 10_000:  # NOTE: many keys or addresses must not grow this without bound
                self._logged = {k: t for k, t in self._logged.items() if now - t < _REFUSAL_LOG_INTERVAL_S}
            self._logged[who] = now
            log.warning("CURVE: refused peer with key %s from %s: not allowed for the %s sockets (security.allow_%s)",
                        who[0], who[1] or "?", domain, domain)
        return False


class Security:
    """Built from the ``security`` section for one ``role`` ('sender' or 'receiver'); key problems are a
    ``ConfigError`` naming the key and the file."""

    def __init__(self, cfg: SecurityConfig, role: str, origin: str) -> None:
        self.config = cfg
        self.enabled = cfg.curve
        self.role = role
        self.public = self.secret = b""
        self.server_key: bytes | None = None
        self.allowed: dict[str, list[bytes]] = {}
        self._auth: _Authenticator | None = None
        self._watch: RefusalWatch | None = None
        if self.enabled:
            self._load(origin)

    def _load(self, origin: str) -> None:
        cfg = self.config
        keys_dir = os.path.expanduser(cfg.keys_dir)
        problems = []

        def attempt(key: str, load: Callable[[], Any]) -> Any:
            try:
                return load()
            except KeyProblem as exc:
                problems.append(f"security.{key}: {exc}")
                return None

        pair = attempt("identity", lambda: load_pair(keys_dir, cfg.identity or self.role))
        self.public, self.secret = pair if pair is not None else (b"", b"")
        if self.role == "sender":
            self.server_key = attempt("storage_key", lambda: public_key(keys_dir, cfg.storage_key))
        # NOTE: only the lists this role serves: a host need not hold the keys of the other role's peers
        lists = ({"senders": cfg.allow_senders} if self.role == "receiver" else
                 {"clients": cfg.allow_clients, "producers": cfg.allow_producers})
        for domain, refs in lists.items():
            found = [attempt(f"allow_{domain}[{i}]", partial(public_key, keys_dir, r)) for i, r in enumerate(refs)]
            self.allowed[domain] = [k for k in found if k is not None]
        if problems:
            raise ConfigError(origin, [*problems, f"(security.curve is on; keys_dir {keys_dir}; make a key pair"
                                                  " with: hidra keys generate NAME --dir DIR)"])

    def plain(self, name: str) -> bool:
        return not self.enabled or _PLAIN_AS.get(name, name) in self.config.plain

    def start(self, context: zmq.Context) -> None:
        """Start the one ZAP handler of the process on ``context`` (idempotent); log the plain sockets."""
        global _active
        if not self.enabled or self._auth is not None:
            return
        auth = _Authenticator(context, log=logging.getLogger("hidra_core.security.zap"))
        auth.start()
        for domain, keys in self.allowed.items():
            auth.configure_curve_callback(domain, credentials_provider=_Allowed(keys, auth))
        self._auth = auth
        self._watch = RefusalWatch(context)
        self._watch.start()
        _active = self
        log.info("CURVE on: %s key %s", self.role, self.public.decode())
        ours = _RECEIVER_SOCKETS if self.role == "receiver" else [n for n in PLAIN_NAMES if n != "status"]
        for name in [n for n in self.config.plain if n in ours]:
            log.warning("security.plain: the %s socket accepts plain ZeroMQ (HiDRA 4.x peers): no encryption, no"
                        " authentication there", name)

    def stop(self) -> None:
        global _active
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if _active is self:
            _active = None

    def apply(self, sock: zmq.Socket, name: str, *, server: bool, server_key: bytes | None = None) -> None:
        """Make ``sock`` (not yet bound or connected) a CURVE server for ``name``'s role, or a CURVE client of
        ``server_key`` (default: the storage key); nothing where ``name`` is plain."""
        if self.plain(name):
            return
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        if server:
            sock.zap_domain = DOMAINS[name].encode()
            sock.curve_server = True
            if self._watch is not None and name != "ingest":  # NOTE: the ingest source monitors its socket itself
                self._watch.add(sock, name)
        else:
            key = server_key if server_key is not None else (
                self.server_key if name in ("data", "confirmations") else None)
            if key is None:
                raise ValueError(f"CURVE: no server key known for the {name} socket")
            sock.curve_serverkey = key

    def prepare(self, name: str, *, server: bool, server_key: bytes | None = None,
                then: Callable[[zmq.Socket], None] | None = None) -> Callable[[zmq.Socket], None]:
        """A ``prepare`` callback for ``Transport.open_socket`` that applies CURVE, then ``then``."""
        def prepare(sock: zmq.Socket) -> None:
            self.apply(sock, name, server=server, server_key=server_key)
            if then is not None:
                then(sock)
        return prepare


def active() -> Security | None:
    """The security of this process once its ZAP handler runs (None: CURVE is off or nothing started yet)."""
    return _active


def secure_socket(sock: zmq.Socket, name: str, *, server: bool, server_key: bytes | None = None) -> bool:
    """For plugins: apply this process's CURVE settings to ``sock`` before it binds or connects, as the ``name``
    socket (``ingest``: producers' keys are allowed, ``stream``: a detector stream). True if CURVE was applied.

    With CURVE on, a ``stream`` socket (a peer that cannot speak CURVE) must be listed in ``security.plain``:
    otherwise ``ValueError`` says so."""
    if name not in DOMAINS and name != "stream":
        raise ValueError(f"secure_socket: unknown socket name {name!r} (one of {', '.join([*DOMAINS, 'stream'])})")
    security = _active
    if security is None or security.plain(name):
        return False
    if name == "stream":
        raise ValueError("security.curve is on but this source reads a stream whose sender cannot speak CURVE:"
                         " add 'stream' to security.plain to accept it unencrypted")
    security.apply(sock, name, server=server, server_key=server_key)
    return True
