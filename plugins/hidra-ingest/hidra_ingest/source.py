"""The ``zmq_ingest`` event source: binds a ROUTER socket that DAQ programs (``hidra_core.ingest.Ingest``) push files
to, and reports each complete file as one ``FileEvent`` carrying its data (fetcher ``inline``).

Acknowledgements are the credit of the producers: a file is acknowledged at the next ``poll``, that is once the
kernel took the previous poll's events into its hold (bounded in bytes, ``sender.hold``). While the hold is full
the source is not polled, reads nothing, sends no acknowledgements, and the producers' sends block (ZeroMQ
high-water marks on both sides, and the producer's window of unacknowledged files).

A producer that dies mid-file leaves nothing: its partial file is discarded when its connection drops (a socket
monitor, then a probe of each producer with an open file) or when nothing arrived from it for
``abandon_after_s``; each discard is logged with the name, counted in ``stats`` and reported to the producer.
"""
from __future__ import annotations

import logging
import time

import zmq
from pydantic import BaseModel, ConfigDict, Field

from hidra_core import EventSource, FileEvent, ingest, receive_batch, secure_socket

from hidra_ingest.assembly import Assembler

log = logging.getLogger(__name__)

__all__ = ["IngestConfig", "IngestSource"]

BATCH_MESSAGES = 1024
#: bytes taken per poll: beyond sender.hold.max_bytes, what the source may hold while the hold is full
BATCH_BYTES = 16 << 20
#: after a connection dropped, producers with an open file are probed this long (the socket forgets a dead peer
#: a moment after the monitor reported it)
_PROBE_S = 2.0
_PING = ingest.encode(ingest.PING)


class IngestConfig(BaseModel):
    """Options of the ``zmq_ingest`` source (``source: {type: zmq_ingest, zmq_ingest: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str = Field(description=(
        "address the source binds and producers connect to, e.g. tcp://0.0.0.0:50300 (port 0 or *: any free one,"
        " logged at start)"))
    max_file_bytes: int = Field(1 << 30, gt=0, description=(
        "largest file a producer may send; a larger one is refused with an error to the producer"))
    max_open_files: int = Field(64, gt=0, description=(
        "files being assembled at once (one per producer); a further one is refused with an error to its producer"))
    max_open_bytes: int = Field(2 << 30, gt=0, description=(
        "bytes of all files being assembled together (sent in pieces, not yet closed); a write past it refuses its"
        " file with an error to the producer. Whole files in one message go straight to sender.hold"))
    abandon_after_s: float = Field(60.0, gt=0, description=(
        "a producer's open file is discarded when nothing arrived from it for this long (a dead producer whose"
        " connection dropped is noticed at once)"))
    rcvhwm: int = Field(4, gt=0, description=(
        "messages ZeroMQ queues per producer before the producer's sends block; outside sender.hold.max_bytes"))


class IngestSource(EventSource):
    config_class = IngestConfig
    default_fetcher = "inline"
    config: IngestConfig

    def __init__(self, config: IngestConfig) -> None:
        super().__init__(config)
        self._asm = Assembler(config.endpoint, config.max_file_bytes, config.max_open_files, config.max_open_bytes)
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._probe_until = 0.0
        self._next_expire = self._next_probe = 0.0
        self.endpoint = config.endpoint

    @property
    def root(self) -> str:
        return str(self.config.endpoint)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: files, bytes, refused, malformed, abandoned, lost (gaps in a producer's files),
        replies_dropped."""
        return self._asm.stats

    @property
    def open_files(self) -> list[str]:
        """Names of the files being assembled."""
        return [p.open.name for p in self._asm.with_open_files() if p.open is not None]

    def open(self, context: zmq.Context) -> None:
        sock = context.socket(zmq.ROUTER)
        sock.linger = 0
        sock.rcvhwm, sock.sndhwm = self.config.rcvhwm, 10_000
        sock.router_mandatory = 1  # NOTE: a reply to a producer that is gone raises instead of vanishing
        sock.router_handover = 1  # NOTE: a producer that reconnects keeps its routing id
        sock.heartbeat_ivl, sock.heartbeat_timeout = 1000, 10_000
        curve = secure_socket(sock, "ingest", server=True)  # NOTE: producers' keys: security.allow_producers
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            sock.bind(self.endpoint)  # NOTE: after a restart, the port that port 0 got the first time
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close()
            sock.close()
            raise ValueError(f"zmq_ingest: cannot bind {self.endpoint!r}: {exc}") from None
        self._sock, self._monitor = sock, monitor
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("zmq_ingest: listening on %s%s", self.endpoint, " (CURVE)" if curve else "")

    def close(self) -> None:
        for producer in self._asm.with_open_files():
            self._asm.discard(producer, "the source closed")
        if self._sock is not None:
            self._send_replies()
            self._sock.disable_monitor()
            self._sock.close()
            self._sock = None
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        assert self._sock is not None, "open() first"
        # NOTE: the kernel polls again only once it holds what the last poll returned: acknowledge that now
        self._send_acks()
        self._watch_peers()
        out = []
        for frames in receive_batch(self._sock, timeout_ms, BATCH_MESSAGES, BATCH_BYTES):
            event = self._asm.handle(bytes(frames[0]), frames[1:], time.monotonic())
            if event is not None:
                out.append(event)
        self._send_replies()
        return out

    def _send(self, rid: bytes, header: bytes) -> bool:
        assert self._sock is not None
        try:
            self._sock.send_multipart([rid, header], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # gone (EHOSTUNREACH), or not reading its replies (EAGAIN)
            return False

    def _send_replies(self) -> None:
        outbox, self._asm.outbox = self._asm.outbox, []
        for rid, header in outbox:
            if not self._send(rid, header):
                self._asm.stats["replies_dropped"] += 1

    def _send_acks(self) -> None:
        for producer in self._asm.producers.values():
            if producer.done > producer.acked:
                if self._send(producer.rid, ingest.encode(ingest.ACK, upto=producer.done, first=producer.first)):
                    producer.acked = producer.done

    def _watch_peers(self) -> None:
        """Discard the open files of producers whose connection dropped or who went quiet."""
        assert self._monitor is not None and self._sock is not None
        now = time.monotonic()
        while self._monitor.poll(0):
            self._monitor.recv_multipart()
            self._probe_until = now + _PROBE_S
        if now < self._probe_until and now >= self._next_probe:
            self._next_probe = now + 0.05
            for producer in self._asm.with_open_files():
                try:
                    self._sock.send_multipart([producer.rid, _PING], zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EHOSTUNREACH:
                        self._asm.discard(producer, "its connection dropped")
        if now >= self._next_expire:
            self._next_expire = now + 0.5
            self._asm.expire(now, self.config.abandon_after_s)
