"""Write results on the status bus (databuffer.md §1): one JSON message per finished request, best effort.

Each writer's PUB socket *connects* to ``--status_endpoint``, where one monitor's SUB socket binds: N writers
started with the same flag then all reach that one subscriber, and writers and monitor may start in any order.
Wire format: two frames, the topic ``databuffer.write`` and the JSON object ``{output_file, ok, n_channels,
n_points, error, elapsed, pid}``. PUB semantics apply: a result sent while no monitor is subscribed is gone; the
``.err`` files and the audit trail, not this bus, are the durable record.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

import zmq

log = logging.getLogger(__name__)

__all__ = ["TOPIC", "ResultPublisher", "WriteResult"]

TOPIC = b"databuffer.write"
# NOTE: enough for a monitor that stalls a while; beyond it ZeroMQ drops, and writing never waits on a monitor.
_SNDHWM = 1000
_LINGER_MS = 500


@dataclass(frozen=True)
class WriteResult:
    output_file: str
    ok: bool
    n_channels: int
    n_points: int
    error: str | None
    elapsed: float


class ResultPublisher:
    """A PUB socket connected to the monitor; owned and used by the writer loop's thread only."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.endpoint = endpoint
        self.dropped = 0
        self._pid = os.getpid()
        self._socket = context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, _SNDHWM)
        self._socket.setsockopt(zmq.LINGER, _LINGER_MS)
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError:
            self._socket.close()
            raise

    def publish(self, result: WriteResult) -> None:
        body = json.dumps({**asdict(result), "pid": self._pid}).encode()
        try:
            self._socket.send_multipart([TOPIC, body], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.dropped += 1
            log.warning("write result for %s not published (%s); %d dropped so far", result.output_file, exc,
                        self.dropped)

    def close(self) -> None:
        self._socket.close()
