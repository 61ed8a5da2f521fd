"""Clean-room emulator of the HiDRA 4.x client (``Transfer`` of the ``hidra`` 4.4.x package) on the wire.

Written from hidra4-protocol.md §3–§7 only, never from the 4.x sources. It reproduces what a 4.x client does,
quirks included, so that conformance tests can show our sender serves 4.x clients unchanged (§10):

* every signal is 4 frames ``[version, appid, signal, json(targets)]``; version ``4.4.3`` by default;
* a reply must arrive within 1 s, else ``CommunicationFailed`` and the REQ socket is replaced;
* success means reply frame 0 *starts with* the signal sent;
* ``initiate`` sends ``START_*`` and then ``GET_VERSION`` on a fresh REQ socket;
* ``get_chunk`` sends a ``NEXT`` before waiting for *each chunk* in the QUERY modes, ``CANCEL`` on timeout;
* end of file is decided only by the §6.2 rule (``last_chunk``/``chunk_count`` are ignored), and a missing
  ``filesize`` on a full-size chunk raises;
* ``store`` applies the 4.x chunk-order rules;
* ``stop`` sends ``STOP_STREAM`` for both stream types and ``STOP_QUERY_NEXT`` for both query types.

Deliberate deviation, for the safety of test machines: ``store`` refuses paths that leave ``target_base_path``.
Timeouts of ``get``/``get_chunk``/``store`` are in milliseconds, as in 4.x.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, BinaryIO, Sequence

import zmq

__all__ = [
    "AuthenticationFailed", "CommunicationFailed", "DataSavingError", "FormatError", "LegacyClient", "LegacyError",
    "REPLY_WINDOW_S", "VERSION", "VersionError", "raw_push", "raw_request", "suffixes_to_regex",
]

VERSION = "4.4.3"
REPLY_WINDOW_S = 1.0
CONNECTION_TYPES = ("STREAM", "STREAM_METADATA", "QUERY_NEXT", "QUERY_NEXT_METADATA")


class LegacyError(Exception):
    """Base of the emulator's exceptions (names follow the 4.x client's)."""


class VersionError(LegacyError):
    pass


class AuthenticationFailed(LegacyError):
    pass


class CommunicationFailed(LegacyError):
    pass


class FormatError(LegacyError):
    """A data message the 4.x client cannot handle."""


class DataSavingError(LegacyError):
    """``store`` met a chunk order it refuses, or a path outside the target directory."""


def suffixes_to_regex(suffixes: Sequence[str]) -> str:
    """The 4.x conversion: suffixes inserted verbatim (dots not escaped); ``[""]`` means everything."""
    if list(suffixes) == [""]:
        return ".*"
    return ".*(" + "|".join(suffixes) + ")$"


def _socket(context: zmq.Context, kind: int) -> zmq.Socket:
    # NOTE: HWMs stay at libzmq's defaults, as in a 4.x client; only linger is set, so tests never hang on close.
    sock = context.socket(kind)
    sock.linger = 0
    return sock


def raw_request(endpoint: str, frames: Sequence[bytes], *, timeout_s: float = REPLY_WINDOW_S,
                context: zmq.Context | None = None) -> list[bytes] | None:
    """Send arbitrary ``frames`` on a fresh REQ socket; the reply, or None if none came within ``timeout_s``."""
    ctx = context or zmq.Context.instance()
    sock = _socket(ctx, zmq.REQ)
    try:
        sock.connect(endpoint)
        sock.send_multipart(list(frames))
        return sock.recv_multipart() if sock.poll(int(timeout_s * 1000)) else None
    finally:
        sock.close(linger=0)


def raw_push(endpoint: str, frames: Sequence[bytes], *, context: zmq.Context | None = None,
             timeout_s: float = REPLY_WINDOW_S) -> None:
    """Send arbitrary ``frames`` to a PULL endpoint (e.g. a request port), waiting up to ``timeout_s`` to flush."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    try:
        sock.connect(endpoint)
        sock.send_multipart(list(frames))
    finally:
        sock.close(linger=int(timeout_s * 1000))


def _file_id(meta: dict[str, Any]) -> str:
    rel = meta.get("relative_path") or ""
    rel = rel[1:] if rel.startswith("/") else rel
    return f"{rel}/{meta['filename']}" if rel else meta["filename"]


def _is_last(meta: dict[str, Any], payload: bytes) -> bool:
    """§6.2, the only end-of-file rule a 4.x client knows."""
    chunksize = meta["chunksize"]
    if len(payload) < chunksize:
        return True
    filesize = meta.get("filesize")
    if filesize is None:
        raise FormatError(f"{_file_id(meta)}: full-size chunk without filesize")
    return filesize % chunksize == 0 and filesize // chunksize == meta["chunk_number"] + 1


@dataclass
class _Stored:
    handle: BinaryIO
    tmp: str
    final: str
    last: int


class LegacyClient:
    """One 4.x client. Records what it sent (``sent_signals``, ``sent_requests``) and got (``replies``)."""

    def __init__(self, connection_type: str, signal_host: str | None = None, *, com_port: int = 50000,
                 request_port: int = 50001, version: str = VERSION, appid: str | None = None,
                 context: zmq.Context | None = None, detector_id: str | None = None,
                 control_server_port: int = 51000, reply_window_s: float = REPLY_WINDOW_S,
                 suffix_lists_on_wire: bool = False) -> None:
        if connection_type not in CONNECTION_TYPES:
            raise ValueError(connection_type)
        self.connection_type = connection_type
        self.signal_host = signal_host
        self.com_port, self.request_port = com_port, request_port
        self.version = version
        self.appid = appid if appid is not None else str(os.getpid())
        self.reply_window_s = reply_window_s
        self.suffix_lists_on_wire = suffix_lists_on_wire  # True: send suffix lists as a 3.1.2 client does
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.targets: list[list[Any]] = []
        self.socket_id: str | None = None
        self.remote_version: str | None = None
        self.sent_signals: list[list[bytes]] = []
        self.replies: list[list[bytes]] = []
        self.sent_requests: list[list[bytes]] = []
        self._com: zmq.Socket | None = None
        self._data: zmq.Socket | None = None
        self._request: zmq.Socket | None = None
        self._partials: dict[str, list[bytes]] = {}
        self._stored: dict[str, _Stored] = {}
        if detector_id is not None:
            self._lookup_ports(detector_id, control_server_port)

    @property
    def is_query(self) -> bool:
        return self.connection_type.startswith("QUERY_NEXT")

    @property
    def is_metadata(self) -> bool:
        return self.connection_type.endswith("_METADATA")

    # -- com port -----------------------------------------------------------------------------------------------

    def _exchange(self, frames: list[bytes], endpoint: str) -> list[bytes]:
        if self._com is None:
            self._com = _socket(self.context, zmq.REQ)
            self._com.connect(endpoint)
        self._com.send_multipart(frames)
        if not self._com.poll(int(self.reply_window_s * 1000)):
            self._com.close(linger=0)  # a REQ without its reply can never send again
            self._com = None
            raise CommunicationFailed(f"no reply from {endpoint} within {self.reply_window_s} s")
        reply = self._com.recv_multipart()
        self.replies.append(reply)
        return reply

    def _lookup_ports(self, detector_id: str, control_port: int) -> None:
        endpoint = f"tcp://{self.signal_host}:{control_port}"
        try:
            if self._exchange([b"IS_ALIVE"], endpoint) != [b"OK"]:
                raise CommunicationFailed("control server is not alive")
            host_id = socket.getfqdn().encode()
            ports = [json.loads(self._exchange([b"get", host_id, detector_id.encode(), name], endpoint)[0])
                     for name in (b"com_port", b"request_port")]
        finally:
            self.renew_com()
        self.com_port, self.request_port = ports

    def renew_com(self) -> None:
        if self._com is not None:
            self._com.close(linger=0)
            self._com = None

    def send_signal(self, signal: str, targets: list[list[Any]]) -> list[bytes]:
        """One 4-frame signal; the raw reply (``CommunicationFailed`` after the reply window)."""
        frames = [self.version.encode(), self.appid.encode(), signal.encode(), json.dumps(targets).encode()]
        self.sent_signals.append(frames)
        return self._exchange(frames, f"tcp://{self.signal_host}:{self.com_port}")

    @staticmethod
    def check_reply(signal: str, reply: list[bytes]) -> None:
        head = reply[0] if reply else b""
        if head.startswith(signal.encode()):  # the 4.x start-of-reply test
            return
        if head == b"VERSION_CONFLICT":
            raise VersionError(reply[1].decode() if len(reply) > 1 else "")
        if head == b"NO_VALID_HOST":
            raise AuthenticationFailed(signal)
        if head in (b"STORING_DISABLED", b"NO_VALID_SIGNAL", b"CONNECTION_ALREADY_OPEN"):
            raise CommunicationFailed(head.decode())
        raise CommunicationFailed(f"unexpected reply {reply!r}")

    def set_appid(self, appid: object) -> None:
        self.appid = str(appid)

    def get_remote_version(self) -> str:
        reply = self.send_signal("GET_VERSION", [])
        self.check_reply("GET_VERSION", reply)
        return reply[1].decode()

    def wire_targets(self, targets: Sequence[Any]) -> list[list[Any]]:
        entries = [targets] if isinstance(targets[0], str) else targets
        wire = []
        for entry in entries:
            pattern: Any = ".*"
            if len(entry) > 3:
                pattern = entry[3]
                if isinstance(pattern, list) and not self.suffix_lists_on_wire:
                    pattern = suffixes_to_regex(pattern)
            wire.append([f"{socket.getfqdn(entry[0])}:{entry[1]}", entry[2], pattern])
        return wire

    def initiate(self, targets: Sequence[Any]) -> None:
        signal = f"START_{self.connection_type}"
        wire = self.wire_targets(targets)
        self.check_reply(signal, self.send_signal(signal, wire))
        self.targets = wire
        self.renew_com()  # GET_VERSION goes out on a fresh REQ socket
        self.remote_version = self.get_remote_version()

    def force_stop(self, targets: Sequence[Any]) -> list[bytes]:
        return self.send_signal(f"FORCE_STOP_{self.connection_type}", self.wire_targets(targets))

    # -- data ---------------------------------------------------------------------------------------------------

    def start(self, data_socket_prop: Any = None, whitelist: Sequence[str] | None = None) -> str:
        if whitelist is not None:
            raise NotImplementedError("the emulator does not run a ZAP allow-list")
        if data_socket_prop is None:
            host, _, port = self.targets[0][0].rpartition(":")
            bind_host, id_host = "0.0.0.0", host
        elif isinstance(data_socket_prop, (list, tuple)):
            bind_host, port = data_socket_prop
            id_host = socket.getfqdn() if bind_host in ("0.0.0.0", "*") else socket.getfqdn(bind_host)
        else:
            bind_host, id_host, port = "0.0.0.0", socket.getfqdn(), data_socket_prop
        self._data = _socket(self.context, zmq.PULL)
        if int(port) == 0:
            port = self._data.bind_to_random_port(f"tcp://{bind_host}")
        else:
            self._data.bind(f"tcp://{bind_host}:{port}")
        self.socket_id = f"{id_host}:{port}"
        if self.is_query:
            self._request = self.context.socket(zmq.PUSH)
            self._request.linger = 1000
            self._request.connect(f"tcp://{self.signal_host}:{self.request_port}")
        return self.socket_id

    def _send_request(self, word: bytes) -> None:
        assert self._request is not None and self.socket_id is not None
        frames = [word, self.socket_id.encode()]
        self._request.send_multipart(frames)
        self.sent_requests.append(frames)

    def get_chunk(self, timeout: float | None = None) -> list[Any]:
        """One message ``[metadata, payload]``; ``[None, None]`` after ``timeout`` ms (then CANCEL in QUERY)."""
        assert self._data is not None, "start() first"
        if self.is_query:
            self._send_request(b"NEXT")
        while True:
            if not self._data.poll(None if timeout is None else int(timeout)):
                if self.is_query:
                    self._send_request(b"CANCEL")
                return [None, None]
            frames = self._data.recv_multipart()
            if frames == [b"ALIVE_TEST"]:
                continue
            if len(frames) < 2:
                raise FormatError(f"message with {len(frames)} frame(s)")
            return [json.loads(frames[0]), frames[1]]

    def get(self, timeout: float | None = None) -> list[Any]:
        """A whole file ``[metadata, data]`` (``data`` None in the metadata modes)."""
        if self.is_metadata:
            metadata, _ = self.get_chunk(timeout)
            return [metadata, None]
        while True:
            metadata, payload = self.get_chunk(timeout)
            if metadata is None:
                return [None, None]
            fid = _file_id(metadata)
            self._partials.setdefault(fid, []).append(payload)
            if _is_last(metadata, payload):
                metadata["chunk_number"] = None
                return [metadata, b"".join(self._partials.pop(fid))]

    def _target_path(self, base: str, meta: dict[str, Any]) -> str:
        rel = meta.get("relative_path") or ""
        rel = rel[1:] if rel.startswith("/") else rel
        path = os.path.realpath(os.path.join(base, rel, meta["filename"]))
        root = os.path.realpath(base)
        if not path.startswith(root + os.sep):
            raise DataSavingError(f"{path!r} is outside {root!r} (emulator safety check)")
        return path

    def store(self, target_base_path: str, timeout: float | None = None) -> str | None:
        """Receive chunks until one file is complete and stored; its path, or None on timeout."""
        if self.is_metadata:
            raise LegacyError("nothing to store in a metadata mode")
        while True:
            meta, payload = self.get_chunk(timeout)
            if meta is None:
                return None
            fid, number = _file_id(meta), meta["chunk_number"]
            entry = self._stored.get(fid)
            if entry is None:
                if number != 0:
                    raise DataSavingError(f"{fid}: first chunk seen is {number}, not 0")
                final = self._target_path(target_base_path, meta)
                os.makedirs(os.path.dirname(final), exist_ok=True)
                tmp = final + ".tmp"
                entry = self._stored[fid] = _Stored(open(tmp, "wb"), tmp, final, -1)  # noqa: SIM115 (kept open)
            elif number == entry.last:
                continue  # a repeat of the last chunk is ignored
            elif number == 0:
                entry.handle.seek(0)  # the sender restarted the file
                entry.handle.truncate()
            elif number < entry.last:
                raise DataSavingError(f"{fid}: chunk {number} after chunk {entry.last}")
            entry.handle.write(payload)
            entry.last = number
            if _is_last(meta, payload):
                entry.handle.close()
                os.replace(entry.tmp, entry.final)
                del self._stored[fid]
                return entry.final

    # -- shutdown -----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """STOP_STREAM (both stream types) or STOP_QUERY_NEXT (both query types), reply ignored; close all."""
        if self.targets and self.signal_host:
            signal = "STOP_QUERY_NEXT" if self.is_query else "STOP_STREAM"
            with contextlib.suppress(CommunicationFailed):  # the reply is ignored, a missing one too
                self.send_signal(signal, self.targets)
            self.targets = []
        self.close()

    def close(self) -> None:
        self.renew_com()
        for sock in (self._data, self._request):
            if sock is not None:
                sock.close()
        self._data = self._request = None
        for entry in self._stored.values():
            entry.handle.close()
            os.unlink(entry.tmp)
        self._stored.clear()
        if self._own_context and not self.context.closed:
            self.context.term()

    def __enter__(self) -> LegacyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
