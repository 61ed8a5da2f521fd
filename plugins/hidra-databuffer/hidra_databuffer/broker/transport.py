"""The request stream (databuffer.md §4): each writing request is one bsread message on a PUSH socket that binds.

Channels ``data_api_request`` (string), ``parameters`` (string) and ``timestamp`` (float64): 8 frames with the main
and data headers. ``pulse_id`` is the broker's own counter (0, 1, 2, ... per message sent). No writer connected
within ``send_timeout_ms`` -> ``zmq.Again``; ZeroMQ deals requests round-robin over the connected writers.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import zmq
from bsread.sender import Sender

from hidra_databuffer.broker.audit import AuditTrail

__all__ = ["REQUEST_CHANNELS", "RequestSender"]

log = logging.getLogger(__name__)

REQUEST_CHANNELS = (("data_api_request", "string"), ("parameters", "string"), ("timestamp", "float64"))


class RequestSender:
    """Owns the bsread sender on one worker thread: its ZeroMQ socket is only ever used by that thread, and
    audit-then-send of one run never interleaves with another's."""

    def __init__(self, host: str, port: int, queue_length: int, send_timeout_ms: int) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-requests")
        self._sender: Sender | None = None
        self._pulse_id = 0
        try:
            self.endpoint = self._worker.submit(self._open, host, port, queue_length, send_timeout_ms).result()
        except BaseException:
            self._worker.shutdown()
            raise

    def _open(self, host: str, port: int, queue_length: int, send_timeout_ms: int) -> str:
        # NOTE: port 0 -> ZeroMQ's wildcard port; the sender takes the address and port as text
        sender = Sender(queue_size=queue_length, port=port or "*", address=f"tcp://{host}", block=True,
                        send_timeout=send_timeout_ms)
        for name, kind in REQUEST_CHANNELS:
            sender.add_channel(name, metadata={"type": kind, "shape": [1], "encoding": "little"})
        sender.open()
        self._sender = sender
        endpoint: bytes = sender.stream.socket.getsockopt(zmq.LAST_ENDPOINT)
        return endpoint.decode()

    def submit(self, requests: list[dict[str, Any]], audit: AuditTrail, send: bool) -> Future[None]:
        """Audit then (unless audit-only) send each request in order; the future raises the first failure."""
        return self._worker.submit(self._run, requests, audit, send)

    def _run(self, requests: list[dict[str, Any]], audit: AuditTrail, send: bool) -> None:
        for request in requests:
            audit.write(request)
            if send:
                self._send(request)

    def _send(self, request: dict[str, Any]) -> None:
        assert self._sender is not None
        self._sender.send(request["data_api_request"], request["parameters"], float(request["timestamp"]),
                          pulse_id=self._pulse_id, check_data=False)
        log.info("request %d sent: %s", self._pulse_id, request["parameters"])
        self._pulse_id += 1

    def close(self) -> None:
        self._worker.submit(self._close).result()
        self._worker.shutdown()

    def _close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender.stream.context.term()
