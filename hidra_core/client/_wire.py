"""Signal exchange with a 4.x-compatible sender (hidra4-protocol.md §3): target lists, the com-port REQ socket
with its reply deadline, reply checking, and the legacy control-server port lookup (§8)."""
from __future__ import annotations

import functools
import json
import logging
import re
import socket
from typing import Any, Sequence

import zmq

from hidra_core.client.errors import AuthenticationFailed, CommunicationFailed, VersionError

__all__ = [
    "CONNECTION_TYPES", "PROTOCOL_VERSION", "SignalChannel", "check_reply", "fqdn", "lookup_ports",
    "signal_frames", "socket_id", "wire_targets",
]

log = logging.getLogger(__name__)

#: the version we announce in frame 0; the sender compares only the major part (§3.2)
PROTOCOL_VERSION = "4.4.3"
CONNECTION_TYPES = ("STREAM", "STREAM_METADATA", "QUERY_NEXT", "QUERY_NEXT_METADATA")

_ERRORS_COMMUNICATION = {b"NO_VALID_SIGNAL", b"STORING_DISABLED", b"CONNECTION_ALREADY_OPEN"}


@functools.lru_cache(maxsize=256)
def fqdn(host: str = "") -> str:
    """``socket.getfqdn`` cached: the sender compares ids after the same canonicalisation (§1)."""
    if host in ("", "0.0.0.0", "*"):
        return socket.getfqdn()
    return socket.getfqdn(host)


def socket_id(host: str, port: int) -> str:
    return f"{fqdn(host)}:{int(port)}"


def _suffix_regex(suffixes: Sequence[str]) -> str:
    # NOTE: unlike the 3.x conversion on the sender (suffixes inserted verbatim), we escape them: ".cbf" must not
    # also match "xcbf". An empty suffix means "everything", as on the sender.
    if any(s == "" for s in suffixes):
        return ".*"
    return ".*(" + "|".join(re.escape(s) for s in suffixes) + ")$"


def _pattern(raw: Any) -> str:
    if raw is None:
        return ".*"
    if isinstance(raw, (list, tuple)):
        if not raw or not all(isinstance(s, str) for s in raw):
            raise ValueError(f"a suffix list must hold strings and not be empty, got {raw!r}")
        return _suffix_regex(raw)
    if not isinstance(raw, str):
        raise ValueError(f"a target pattern is a regex string or a list of suffixes, got {raw!r}")
    try:
        re.compile(raw)
    except re.error as exc:
        raise ValueError(f"target pattern {raw!r} does not compile: {exc}") from None
    return raw


def _one_target(entry: Sequence[Any]) -> list[Any]:
    if not isinstance(entry, (list, tuple)) or len(entry) not in (3, 4):
        raise ValueError(f"a target is [host, port, prio] or [host, port, prio, pattern], got {entry!r}")
    host, port, prio = entry[0], entry[1], entry[2]
    if not isinstance(host, str) or not host or ":" in host:
        raise ValueError(f"target host must be a DNS name or IPv4 address, got {host!r}")
    try:
        port_number = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"target port must be an integer, got {port!r}") from None
    if not 0 < port_number < 65536:
        raise ValueError(f"target port out of range: {port_number}")
    if isinstance(prio, bool) or not isinstance(prio, int) or prio < 0:
        raise ValueError(f"target prio must be an integer >= 0, got {prio!r}")
    return [socket_id(host, port_number), prio, _pattern(entry[3] if len(entry) == 4 else None)]


def wire_targets(targets: Sequence[Any]) -> list[list[Any]]:
    """User targets (one target or a list of them, §3.3) -> wire entries ``["fqdn:port", prio, regex]``."""
    if not isinstance(targets, (list, tuple)) or not targets:
        raise ValueError(f"targets must be a target or a non-empty list of targets, got {targets!r}")
    if isinstance(targets[0], str):  # a single [host, port, prio(, pattern)]
        return [_one_target(targets)]
    return [_one_target(t) for t in targets]


def signal_frames(version: str, appid: str, signal: str, targets: list[list[Any]]) -> list[bytes]:
    return [version.encode(), appid.encode(), signal.encode(), json.dumps(targets).encode()]


def check_reply(signal: str, reply: list[bytes]) -> None:
    """Raise the exception a refusal maps to (§3.4); a reply whose frame 0 is the signal itself is success."""
    head = reply[0] if reply else b""
    if head == signal.encode():
        return
    detail = b" ".join(reply).decode(errors="replace")
    if head == b"VERSION_CONFLICT":
        server = reply[1].decode(errors="replace") if len(reply) > 1 else None
        raise VersionError(f"{signal}: sender refused version {PROTOCOL_VERSION} (it speaks {server})", server)
    if head == b"NO_VALID_HOST":
        raise AuthenticationFailed(f"{signal}: sender refused the host of a target or of this requester")
    if head in _ERRORS_COMMUNICATION:
        raise CommunicationFailed(f"{signal}: sender replied {detail}", reply)
    raise CommunicationFailed(f"{signal}: unexpected reply {detail!r}", reply)


class SignalChannel:
    """A REQ socket to one REP endpoint whose every request must be answered within ``timeout_s``.

    REQ is lock-step: after an unanswered request it can never send again, so a timeout discards the socket
    and the next request uses a fresh one.
    """

    def __init__(self, context: zmq.Context, endpoint: str, timeout_s: float, keys: Any = None) -> None:
        self.context = context
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.keys = keys  # ClientKeys: a CURVE client of the sender; None: plain (4.x)
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self.context.socket(zmq.REQ)
            sock.linger = 0  # requests are lock-step: nothing worth delivering after close
            sock.sndhwm = sock.rcvhwm = 10
            if self.keys is not None:
                self.keys.client(sock)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def renew(self) -> None:
        """Drop the current socket; the next request goes out on a new connection."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(self, frames: list[bytes], timeout_s: float | None = None) -> list[bytes]:
        """Send ``frames`` and return the reply; ``CommunicationFailed`` if none arrives in time."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        sock = self._socket()
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            if sock.poll(int(timeout * 1000), zmq.POLLIN):
                return sock.recv_multipart()
        except zmq.ZMQError as exc:
            self.renew()
            raise CommunicationFailed(f"request to {self.endpoint} failed: {exc}") from exc
        self.renew()
        raise CommunicationFailed(f"no reply from {self.endpoint} within {timeout:g} s")

    def close(self) -> None:
        self.renew()


def lookup_ports(context: zmq.Context, host: str, control_port: int, detector_id: str,
                 timeout_s: float, keys: Any = None) -> tuple[int, int]:
    """Ask a legacy control server (or our read-only shim, §8) for a detector's com and request ports."""
    channel = SignalChannel(context, f"tcp://{host}:{control_port}", timeout_s, keys)
    try:
        reply = channel.request([b"IS_ALIVE"])
        if reply[:1] != [b"OK"]:
            raise CommunicationFailed(f"control server {host}:{control_port} is not alive: {reply!r}", reply)
        ports = []
        for name in (b"com_port", b"request_port"):
            reply = channel.request([b"get", fqdn().encode(), detector_id.encode(), name])
            try:
                value = json.loads(reply[0]) if len(reply) == 1 else None
            except ValueError:
                value = None
            if isinstance(value, bool) or not isinstance(value, int):
                raise CommunicationFailed(f"control server has no {name.decode()} for detector {detector_id!r}: "
                                          f"{reply!r}", reply)
            ports.append(value)
        log.debug("detector %s on %s: com port %d, request port %d", detector_id, host, ports[0], ports[1])
        return ports[0], ports[1]
    finally:
        channel.close()
