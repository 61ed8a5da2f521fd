"""Hosts the event source in its own thread; its events go to the router loop through the ``Handoff``."""
from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from hidra_core.sender.handoff import Handoff

__all__ = ["SourceThread"]

log = logging.getLogger(__name__)

_POLL_MS = 100
_MAX_BACKOFF_S = 30.0


class SourceThread:
    """Opens, polls and closes one ``EventSource``; restarts it with back-off when it raises."""

    def __init__(self, source: Any, context: zmq.Context, stop: Any, handoff: Handoff) -> None:
        self.source = source
        self.context = context
        self.stop = stop
        self.handoff = handoff
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="hidra-source", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self) -> bool:
        """Block until the source is open (watches in place); False if opening it failed."""
        while not self._ready.wait(0.1):
            if not self._thread.is_alive() or self.stop.is_set():
                break
        if self._failed is not None:
            log.error("event source %s could not start: %s", type(self.source).__name__, self._failed)
            return False
        return self._ready.is_set()

    def join(self) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _main(self) -> None:
        bell = self.handoff.connect(self.context)
        try:
            self._run(bell)
        finally:
            bell.close()

    def _run(self, bell: zmq.Socket) -> None:
        backoff = 0.5
        try:
            self.source.open(self.context)
        except Exception as exc:
            self._failed = exc
            return
        self._ready.set()
        while not self.stop.is_set():
            try:
                events = self.source.poll(_POLL_MS)
                if events:
                    self.handoff.put(events, bell)
                backoff = 0.5
            except Exception:
                log.exception("event source failed; restarting it in %.1f s", backoff)
                self._reopen(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        self.source.close()

    def _reopen(self, delay: float) -> None:
        try:
            self.source.close()
        except Exception:
            log.debug("closing the failed source raised", exc_info=True)
        if self.stop.wait(delay):
            return
        try:
            self.source.open(self.context)
        except Exception:  # the next poll fails too and brings us back here with a longer delay
            log.exception("reopening the event source failed")
