"""ZeroMQ transport driver, registered for the ``tcp``, ``ipc`` and ``inproc`` URL schemes."""
from __future__ import annotations

import os
from typing import Callable

import zmq
from pydantic import BaseModel, ConfigDict, Field

from hidra_core import Transport

__all__ = ["ZmqTransport", "ZmqTransportConfig"]

SCHEMES = ("tcp", "ipc", "inproc")


class ZmqTransportConfig(BaseModel):
    """Options of the ``tcp``/``ipc``/``inproc`` transports (``transports: {tcp: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    linger_ms: int = Field(1000, ge=0, description="how long close() may wait to flush queued messages")
    heartbeat_ivl_ms: int = Field(1000, ge=0, description="ZMTP heartbeat interval (0: off)")
    heartbeat_timeout_ms: int = Field(5000, ge=0, description="drop a connection whose heartbeats stop")
    reconnect_ivl_ms: int = Field(100, gt=0, description="first reconnect delay")
    reconnect_ivl_max_ms: int = Field(2000, ge=0, description="reconnect back-off ceiling")
    tcp_keepalive: bool = Field(True, description="enable TCP keepalive on tcp:// sockets")


class ZmqTransport(Transport):
    config_class = ZmqTransportConfig

    def open_socket(self, context: zmq.Context, socket_type: int, endpoint: str, *, bind: bool,
                    hwm: int, prepare: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
        scheme, sep, address = endpoint.partition("://")
        if not sep or scheme not in SCHEMES or not address:
            raise ValueError(f"endpoint {endpoint!r} is not tcp://host:port, ipc://path or inproc://name")
        cfg = self.config
        sock = context.socket(socket_type)
        try:
            sock.linger = cfg.linger_ms
            sock.sndhwm = hwm
            sock.rcvhwm = hwm
            sock.reconnect_ivl = cfg.reconnect_ivl_ms
            sock.reconnect_ivl_max = cfg.reconnect_ivl_max_ms
            if cfg.heartbeat_ivl_ms:
                sock.heartbeat_ivl = cfg.heartbeat_ivl_ms
                sock.heartbeat_timeout = cfg.heartbeat_timeout_ms
            if scheme == "tcp" and cfg.tcp_keepalive:
                sock.tcp_keepalive = 1
            if prepare is not None:
                prepare(sock)
            if bind:
                if scheme == "tcp" and address.endswith(":0"):
                    endpoint = endpoint[:-2] + ":*"  # port 0 means "any free port"
                if scheme == "ipc":
                    os.makedirs(os.path.dirname(os.path.abspath(address)) or ".", exist_ok=True)
                sock.bind(endpoint)
            else:
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise OSError(exc.errno, f"cannot {'bind' if bind else 'connect'} {endpoint}: {exc.strerror}") from None
        except Exception:
            sock.close(0)
            raise
        return sock
