"""Peers that a CURVE socket refuses before any key is seen (they speak plain ZeroMQ: a HiDRA 4.x client or
sender without keys) never reach the ZAP handler; a thread of their own watches the bound sockets' monitors so
the log says so."""
from __future__ import annotations

import logging
import queue
import threading
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

__all__ = ["RefusalWatch"]

log = logging.getLogger(__name__)

# NOTE: a plain peer is seen as a protocol error (mechanism mismatch) when its greeting arrives first, and as a
# handshake without detail when it noticed the mismatch first and hung up; a ZAP refusal is logged by the handler
_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_LOG_INTERVAL_S = 10.0


class RefusalWatch(threading.Thread):
    """Reads the monitors of bound CURVE sockets; one WARNING per socket every ten seconds at most."""

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(name="hidra-curve-watch", daemon=True)
        self.context = context
        self._new: queue.Queue[tuple[str, str, threading.Event]] = queue.Queue()
        self._halt = threading.Event()
        self._wake = f"inproc://hidra-curve-watch-{id(self)}"
        self._count = 0
        self._logged: dict[str, float] = {}

    def add(self, sock: zmq.Socket, name: str) -> None:
        """Monitor ``sock`` (called by its owning thread before it binds; libzmq makes the monitor's endpoint, this
        thread reads it with a socket of its own). Returns once that socket is connected: events before it would
        be lost."""
        self._count += 1
        address = f"{self._wake}-{self._count}"
        sock.monitor(address, _EVENTS)
        connected = threading.Event()
        self._new.put((address, name, connected))
        wake = self.context.socket(zmq.PUSH)  # NOTE: inproc connect-before-bind: fine before run() binds
        wake.linger = 1000
        wake.connect(self._wake)
        wake.send(b"")
        wake.close()
        if not connected.wait(5):
            log.warning("CURVE: the %s socket's refusals of plain peers will not be logged (watch not ready)", name)

    def run(self) -> None:
        poller = zmq.Poller()
        wake = self.context.socket(zmq.PULL)
        wake.linger = 0
        wake.bind(self._wake)
        poller.register(wake, zmq.POLLIN)
        names: dict[zmq.Socket, str] = {}
        try:
            while not self._halt.is_set():
                while not self._new.empty():
                    address, name, connected = self._new.get()
                    pair = self.context.socket(zmq.PAIR)
                    pair.linger = 0
                    pair.connect(address)
                    names[pair] = name
                    poller.register(pair, zmq.POLLIN)
                    connected.set()
                for pair, _ in poller.poll(200):
                    if pair is wake:
                        wake.recv()
                        continue
                    event = parse_monitor_message(pair.recv_multipart())
                    if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                        poller.unregister(pair)
                        pair.close()
                        names.pop(pair)
                    else:
                        self._refused(names[pair], event["endpoint"].decode(errors="replace"))
        finally:
            wake.close()
            for pair in names:
                pair.close()

    def _refused(self, name: str, endpoint: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(name, -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S:
            self._logged[name] = now
            log.warning("CURVE: the %s socket (%s) refused a peer that failed the CURVE handshake: it speaks plain"
                        " ZeroMQ (a HiDRA 4.x peer without keys? list %s in security.plain to let such peers in,"
                        " unencrypted) or has the wrong server key", name, endpoint, name)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5)
