"""``Transfer``: the 4.x-compatible client (hidra4-protocol.md §3–§6), written from the spec.

It registers targets on a sender's com port, binds the PULL data socket the sender connects to, asks for files
on the request port in the QUERY modes, and hands out whole reassembled files. Not thread-safe: use one
``Transfer`` per thread (each owns ZeroMQ sockets).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Collection, Sequence

import zmq

from hidra_core.client._assembly import Reassembler
from hidra_core.client._keys import ClientKeys
from hidra_core.client._store import FileStore
from hidra_core.client._wire import (
    CONNECTION_TYPES,
    PROTOCOL_VERSION,
    SignalChannel,
    check_reply,
    fqdn,
    lookup_ports,
    signal_frames,
    socket_id,
    wire_targets,
)
from hidra_core.client.errors import CommunicationFailed, HidraClientError

__all__ = ["DEFAULT_SIGNAL_TIMEOUT_S", "Transfer"]

log = logging.getLogger(__name__)

#: seconds a signal reply may take. The sender must answer within 1 s (§3.2); we allow some slack.
DEFAULT_SIGNAL_TIMEOUT_S = 2.0
_ANY_HOST = ("", "0.0.0.0", "*")


def _seconds(timeout_ms: float | None, timeout_s: float | None) -> float | None:
    """One wait in seconds from the 4.x ``timeout`` (milliseconds) or ``timeout_s`` (seconds); None: for ever."""
    if timeout_ms is not None and timeout_s is not None:
        raise TypeError("give timeout_s (seconds) or timeout (milliseconds, 4.x), not both")
    wait_s = timeout_s if timeout_ms is None else timeout_ms / 1000
    if wait_s is not None and wait_s < 0:
        raise ValueError(f"a timeout must be >= 0, got {timeout_s if timeout_ms is None else timeout_ms!r}")
    return wait_s


class _OnlyKey:
    """ZAP credentials: one CURVE public key (Z85) is allowed."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.key


class Transfer:
    """A client of one sender. ``connection_type``: STREAM, STREAM_METADATA, QUERY_NEXT or QUERY_NEXT_METADATA.

    ``signal_host`` is the sender's host (needed to register; not for a plain receiver of a fixed stream).
    ``detector_id`` asks the legacy control server on ``control_server_port`` for ``com_port``/``request_port``.
    ``use_log`` is accepted for 4.x compatibility and ignored: logging goes to the ``hidra_core.client`` loggers.
    ``context``: a ZeroMQ context to share (never terminated here); by default the instance owns one.
    ``drop_corrupt``: log and drop files failing their checksum instead of raising ``ChecksumError``.
    ``keys``: ``ClientKeys`` for a sender with ``security.curve`` on: every socket is CURVE, the data socket a
    CURVE server with the client's own key (None: plain, as 4.x).
    """

    def __init__(self, connection_type: str, signal_host: str | None = None, use_log: Any = None,
                 context: zmq.Context | None = None, dirs_not_to_create: Collection[str] | None = None,
                 detector_id: str | None = None, control_server_port: int = 51000, com_port: int = 50000,
                 request_port: int = 50001, *, signal_timeout: float = DEFAULT_SIGNAL_TIMEOUT_S,
                 rcvhwm: int = 100, linger_ms: int = 500, drop_corrupt: bool = False,
                 keys: ClientKeys | None = None) -> None:
        if connection_type not in CONNECTION_TYPES:
            raise ValueError(f"connection_type must be one of {', '.join(CONNECTION_TYPES)}, not {connection_type!r}")
        del use_log  # NOTE: 4.x took a logger switch here; library logging is configured by the application
        self.connection_type = connection_type
        self.keys = keys
        self.signal_host = signal_host
        self.signal_timeout = signal_timeout
        self.rcvhwm = rcvhwm
        self.linger_ms = linger_ms
        self.dirs_not_to_create = tuple(dirs_not_to_create or ())
        self._own_context = context is None
        self.context: zmq.Context = zmq.Context() if context is None else context
        self.appid = str(os.getpid())
        self.targets: list[list[Any]] = []  # registered wire targets, unregistered by stop()
        self.socket_id: str | None = None
        self.data_port: int | None = None
        self.remote_version: str | None = None
        self._signal: SignalChannel | None = None
        self._data: zmq.Socket | None = None
        self._requests: zmq.Socket | None = None
        self._auth: Any = None
        self._stores: dict[str, FileStore] = {}
        self._closed = False
        self._assembler = Reassembler(metadata_only=self.is_metadata, drop_corrupt=drop_corrupt)
        self.com_port, self.request_port = com_port, request_port
        if detector_id is not None:
            try:
                self.com_port, self.request_port = lookup_ports(
                    self.context, self._host(), control_server_port, detector_id, signal_timeout, keys)
            except BaseException:
                self.close()
                raise

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def is_query(self) -> bool:
        return self.connection_type.startswith("QUERY_NEXT")

    @property
    def is_metadata(self) -> bool:
        return self.connection_type.endswith("_METADATA")

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- signals (com port) ---------------------------------------------------------------------------------------

    def _host(self) -> str:
        if not self.signal_host:
            raise ValueError("this Transfer has no signal_host: it cannot talk to a sender")
        return self.signal_host

    def _channel(self) -> SignalChannel:
        if self._closed:
            raise HidraClientError("this Transfer is closed")
        if self._signal is None:
            self._signal = SignalChannel(self.context, f"tcp://{self._host()}:{self.com_port}", self.signal_timeout,
                                         self.keys)
        return self._signal

    def _exchange(self, signal: str, targets: list[list[Any]]) -> list[bytes]:
        reply = self._channel().request(signal_frames(PROTOCOL_VERSION, self.appid, signal, targets))
        check_reply(signal, reply)
        return reply

    def set_appid(self, appid: object) -> None:
        """Name this application to the sender: STOP only removes registrations made under the same appid."""
        self.appid = str(appid)

    def get_remote_version(self) -> str:
        """The sender's protocol version (``GET_VERSION``)."""
        reply = self._exchange("GET_VERSION", [])
        if len(reply) < 2:
            raise CommunicationFailed(f"GET_VERSION reply carries no version: {reply!r}", reply)
        return reply[1].decode(errors="replace")

    def initiate(self, targets: Sequence[Any]) -> None:
        """Register ``targets`` (``[host, port, prio(, pattern | [suffixes])]`` or a list of them) with the sender.

        A suffix list is turned into an anchored regex with the suffixes escaped. ``VersionError``,
        ``AuthenticationFailed`` or ``CommunicationFailed`` if the sender refuses or does not answer in time.
        """
        wire = wire_targets(targets)
        self._exchange(f"START_{self.connection_type}", wire)
        known = {t[0] for t in self.targets}
        self.targets.extend(t for t in wire if t[0] not in known)
        # NOTE: 4.x clients ask for the version on a fresh REQ socket right after registering; senders see the
        # same sequence from us, and it proves the com port still answers.
        self._channel().renew()
        self.remote_version = self.get_remote_version()
        log.info("registered %s as %s (appid %s, sender version %s)",
                 ", ".join(t[0] for t in wire), self.connection_type, self.appid, self.remote_version)

    def force_stop(self, targets: Sequence[Any]) -> bool:
        """Remove registrations of ``targets`` whatever their appid (e.g. of a crashed client).

        True if something was removed, False if the sender had nothing registered for them.
        """
        signal = f"FORCE_STOP_{self.connection_type}"
        reply = self._channel().request(signal_frames(PROTOCOL_VERSION, self.appid, signal, wire_targets(targets)))
        if reply[:1] == [b"NO_OPEN_CONNECTION_FOUND"]:
            return False
        check_reply(signal, reply)
        return True

    # -- data ---------------------------------------------------------------------------------------------------

    def _data_endpoint(self, prop: Any) -> tuple[str, str, int]:
        """``(bind host, id host, port)`` from what ``start`` was given."""
        if prop is None:
            local = fqdn()
            mine = [t[0] for t in self.targets if t[0].rpartition(":")[0] == local] or \
                   [t[0] for t in self.targets if len(self.targets) == 1]
            if len(mine) != 1:
                raise ValueError("start() needs a port: the registered targets do not name exactly one local port")
            host, _, port = mine[0].rpartition(":")
            return "0.0.0.0", host, int(port)
        if isinstance(prop, (list, tuple)):
            if len(prop) != 2:
                raise ValueError(f"start() takes a port or [host, port], got {prop!r}")
            host = str(prop[0])
            bind_host = "0.0.0.0" if host in _ANY_HOST else host
            return bind_host, ("" if host in _ANY_HOST else host), int(prop[1])
        return "0.0.0.0", "", int(prop)

    def start(self, port: Any = None, whitelist: Collection[str] | None = None, *,
              data_socket_prop: Any = None) -> str:
        """Bind the data socket and, in the QUERY modes, connect to the request port. Returns the socket id.

        ``port``: None (the one local port registered by ``initiate``), a port number, or ``[host, port]`` to
        bind one interface; port 0 picks a free port. ``whitelist``: hosts allowed to send data (None: anyone).
        The whitelist runs a ZAP handler, of which a ZeroMQ context can hold only one. ``data_socket_prop`` is
        the 4.x name of ``port``.
        """
        if self._closed:
            raise HidraClientError("this Transfer is closed")
        if self._data is not None:
            raise HidraClientError(f"already started on {self.socket_id}")
        bind_host, id_host, port_number = self._data_endpoint(port if port is not None else data_socket_prop)
        sock = self.context.socket(zmq.PULL)
        sock.linger = 0  # NOTE: a PULL socket has nothing to flush; closing must never wait
        sock.rcvhwm = self.rcvhwm
        if self.keys is not None:
            self.keys.serve(sock)
        self._data = sock
        if whitelist is not None:
            self._start_authenticator(whitelist)
            sock.zap_domain = b"hidra"  # NOTE: ZAP is only consulted for NULL security when a domain is set
        if port_number == 0:
            port_number = sock.bind_to_random_port(f"tcp://{bind_host}")
        else:
            sock.bind(f"tcp://{bind_host}:{port_number}")
        self.data_port = port_number
        self.socket_id = socket_id(id_host, port_number)
        if self.targets and self.socket_id not in {t[0] for t in self.targets}:
            log.warning("data socket %s is not among the registered targets %s", self.socket_id,
                        [t[0] for t in self.targets])
        if self.is_query:
            push = self.context.socket(zmq.PUSH)
            push.linger = self.linger_ms  # a last CANCEL should still reach the sender after close()
            push.sndhwm = 1000
            if self.keys is not None:
                self.keys.client(push)
            push.connect(f"tcp://{self._host()}:{self.request_port}")
            self._requests = push
        log.debug("%s data socket bound as %s", self.connection_type, self.socket_id)
        return self.socket_id

    def _start_authenticator(self, whitelist: Collection[str]) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        addresses: set[str] = set()
        for host in whitelist:
            try:
                addresses.update(socket.gethostbyname_ex(host)[2])
            except OSError as exc:
                log.warning("whitelist host %r does not resolve (%s): ignored", host, exc)
        if not addresses:
            raise ValueError(f"whitelist {list(whitelist)!r} allows nobody; pass None to accept any sender")
        auth = ThreadAuthenticator(self.context, log=logging.getLogger(f"{__name__}.zap"))
        try:
            auth.start()
        except zmq.ZMQError as exc:
            auth.stop()
            # NOTE: libzmq allows one ZAP handler per context, at a fixed inproc endpoint.
            raise HidraClientError("whitelist: this ZeroMQ context already runs a ZAP handler; give each "
                                   "Transfer with a whitelist its own context (the default)") from exc
        auth.allow(*sorted(addresses))
        if self.keys is not None:  # NOTE: with CURVE, the address must match and the peer be the sender itself
            auth.configure_curve_callback("hidra", credentials_provider=_OnlyKey(self.keys.server))
        self._auth = auth

    def _request(self, word: bytes) -> None:
        assert self._requests is not None and self.socket_id is not None
        try:
            self._requests.send_multipart([word, self.socket_id.encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("request queue to %s is full: %s not sent", self.signal_host, word.decode())

    def get(self, timeout: float | None = None, *, timeout_s: float | None = None) -> list[Any]:
        """The next whole file as ``[metadata, data]``; ``data`` is None for metadata-only notices.

        ``metadata`` is that of the file's last chunk with ``chunk_number`` set to None.

        Give at most one of ``timeout_s`` (**seconds**) and ``timeout`` (**milliseconds**, the 4.x meaning, kept
        so 4.x programs work unchanged); neither: wait for ever. On timeout ``[None, None]``. In the QUERY modes
        one ``NEXT`` is sent per call and a ``CANCEL`` on timeout. ``ChecksumError`` if the file is corrupt
        (unless ``drop_corrupt``).
        """
        wait_s = _seconds(timeout, timeout_s)
        data = self._data
        if data is None:
            raise HidraClientError("call start() before get()")
        if self.is_query:
            self._request(b"NEXT")
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not data.poll(wait_ms):
                if self.is_query:
                    self._request(b"CANCEL")
                return [None, None]
            done = self._assembler.feed(data.recv_multipart(copy=False))
            if done is not None:
                return [done.metadata, done.data]

    def store(self, target_base_path: str, timeout: float | None = None, *,
              timeout_s: float | None = None) -> str | None:
        """``get`` one file and write it to ``<target_base_path>/<relative_path>/<filename>`` atomically.

        ``timeout`` (milliseconds, 4.x) or ``timeout_s`` (seconds) as for ``get``. Returns the path written, or
        None on timeout. ``PathRefused`` (nothing written) for unsafe names or a missing directory of
        ``dirs_not_to_create``; ``target_base_path`` must exist.
        """
        if self.is_metadata:
            raise HidraClientError(f"{self.connection_type} delivers no file contents: nothing to store")
        store = self._stores.get(target_base_path)
        if store is None:
            store = self._stores[target_base_path] = FileStore(target_base_path, self.dirs_not_to_create)
        metadata, data = self.get(timeout, timeout_s=timeout_s)
        if metadata is None:
            return None
        if data is None:
            log.warning("%s: metadata-only message in %s mode, nothing stored", metadata.get("filename"),
                        self.connection_type)
            return None
        path = store.write(metadata, data)
        log.debug("stored %s (%d bytes, modified %s)", path, len(data), metadata.get("file_mod_time"))
        return path

    # -- shutdown -----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Unregister what ``initiate`` registered (reply ignored) and close every socket. Idempotent."""
        if self._closed:
            return
        try:
            if self.targets and self.signal_host:
                # NOTE: both stream types stop with STOP_STREAM and both query types with STOP_QUERY_NEXT (§3.4);
                # the sender removes the ids whatever their delivery type.
                signal = "STOP_QUERY_NEXT" if self.is_query else "STOP_STREAM"
                try:
                    reply = self._channel().request(signal_frames(PROTOCOL_VERSION, self.appid, signal, self.targets))
                    log.debug("%s: sender replied %r", signal, reply)
                except CommunicationFailed as exc:
                    log.warning("%s not confirmed: %s", signal, exc)
                self.targets = []
        finally:
            self.close()

    def close(self) -> None:
        """Close the sockets (without unregistering; see ``stop``) and terminate an own context."""
        if self._closed:
            return
        self._closed = True
        if self._signal is not None:
            self._signal.close()
        for sock in (self._data, self._requests):
            if sock is not None:
                sock.close()
        self._data = self._requests = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self.context.term()
