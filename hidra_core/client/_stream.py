"""``stream()``: iterate over the files a sender delivers, registered for exactly as long as the loop runs."""
from __future__ import annotations

from typing import Any, Generator, Sequence

import zmq

from hidra_core.client._wire import fqdn, wire_targets
from hidra_core.client._keys import ClientKeys
from hidra_core.client.transfer import DEFAULT_SIGNAL_TIMEOUT_S, Transfer

__all__ = ["DEFAULT_COM_PORT", "MODES", "stream"]

DEFAULT_COM_PORT = 50000

#: ``mode`` argument -> 4.x connection type
MODES = {
    "stream": "STREAM",
    "stream_metadata": "STREAM_METADATA",
    "query": "QUERY_NEXT",
    "query_metadata": "QUERY_NEXT_METADATA",
}


def stream(host: str, *, port: int = 0, data_host: str | None = None, com_port: int | None = None,
           request_port: int = 50001, pattern: str | Sequence[str] = ".*", mode: str = "stream",
           timeout: float | None = None, appid: str | None = None, prio: int = 1,
           context: zmq.Context | None = None, signal_timeout: float = DEFAULT_SIGNAL_TIMEOUT_S,
           drop_corrupt: bool = False, keys: ClientKeys | None = None,
           ) -> Generator[tuple[dict[str, Any], bytes | None], None, None]:
    """Yield ``(metadata, data)`` for each whole file the sender on ``host`` delivers.

    ``host`` is the sender's host, optionally with its com port: ``"detpc01"``, ``"detpc01:50000"`` or
    ``"tcp://detpc01:50000"`` (the sender's ``clients.com``); ``com_port`` is the other way to give that port
    (default 50000). ``request_port`` (QUERY modes only) is not implied by the com port: give it when not 50001.
    ``port`` 0 binds a free port (on ``data_host``, default all interfaces and this host's FQDN in the id).
    ``pattern`` is a regex matched against file names, or a list of suffixes. ``mode``: ``stream``, ``query``,
    ``stream_metadata`` or ``query_metadata`` (``data`` is None in the metadata modes). ``timeout`` (seconds):
    end the iteration when no file arrived for that long; None waits for ever. Registration happens on the first
    ``next()``; leaving the loop (break, exception, ``close()``) always unregisters and closes the sockets::

        for meta, data in hidra_core.client.stream("detpc01", pattern=r".*\\.cbf$"):
            process(meta["filename"], data)

    ``keys``: ``ClientKeys`` for a sender with ``security.curve`` on.
    Arguments are checked at once, so a typo fails here rather than on the first iteration.
    """
    host, com_port = _com_address(host, com_port)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    target_host = data_host or fqdn()
    wire_targets([target_host, port or 1, prio, pattern])  # validates host, prio and pattern now
    return _iterate(host, MODES[mode], port, data_host, target_host, com_port, request_port, pattern, prio,
                    timeout, appid, context, signal_timeout, drop_corrupt, keys)


def _com_address(host: str, com_port: int | None) -> tuple[str, int]:
    """``(host, com port)`` from ``host`` as ``name``, ``name:port`` or ``tcp://name:port``."""
    address = host[len("tcp://"):] if host.startswith("tcp://") else host
    name, colon, port = address.rpartition(":")
    if not colon or "]" in port:  # a plain name, or a bracketed IPv6 address without a port
        return address, DEFAULT_COM_PORT if com_port is None else com_port
    if not port.isdigit() or not name:
        raise ValueError(f"host {host!r} is not NAME, NAME:PORT or tcp://NAME:PORT")
    if com_port is not None and com_port != int(port):
        raise ValueError(f"host {host!r} names com port {port}, com_port says {com_port}: give one")
    return name.strip("[]"), int(port)


def _iterate(host: str, connection_type: str, port: int, data_host: str | None, target_host: str, com_port: int,
             request_port: int, pattern: str | Sequence[str], prio: int, timeout_s: float | None,
             appid: str | None, context: zmq.Context | None, signal_timeout: float,
             drop_corrupt: bool, keys: ClientKeys | None) -> Generator[tuple[dict[str, Any], bytes | None], None, None]:
    transfer = Transfer(connection_type, host, context=context, com_port=com_port, request_port=request_port,
                        signal_timeout=signal_timeout, drop_corrupt=drop_corrupt, keys=keys)
    try:
        if appid is not None:
            transfer.set_appid(appid)
        # NOTE: bind first, so that a random port is known before it is registered as part of the socket id.
        transfer.start([data_host or "0.0.0.0", port])
        transfer.initiate([target_host, transfer.data_port, prio, pattern])
        while True:
            metadata, data = transfer.get(timeout_s=timeout_s)
            if metadata is None:
                return
            yield metadata, data
    finally:
        transfer.stop()
