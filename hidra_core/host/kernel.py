"""What the sender and the receiver share: building drivers from config sections, and opening endpoints."""
from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from typing import Any, Callable, Mapping

import zmq

from hidra_core.config import validate_section
from hidra_core.errors import HidraError
from hidra_core.host.drivers import build_driver, load_driver_class
from hidra_core.interfaces import Transport
from hidra_core.security import Security

__all__ = ["EndpointInUse", "Endpoints", "StopFlag", "create_driver"]

log = logging.getLogger(__name__)


def create_driver(role: str, name: str, options: Mapping[str, Any], source: str, section: str,
                  **kwargs: Any) -> Any:
    """Load the ``name`` driver of ``role``, validate ``options`` against its config model, instantiate it."""
    cls = load_driver_class(role, name)
    config = validate_section(cls.config_class, options, source, section)
    return build_driver(role, name, config, **kwargs)


class EndpointInUse(HidraError):
    """A configured endpoint cannot be bound because another process holds it; names the key that moves it."""


class Endpoints:
    """Opens sockets through the transport driver registered for each endpoint's URL scheme.

    ``keys`` maps configured endpoints to their config keys, so a busy port names the option that changes it.
    ``security`` (CURVE) applies to every socket, by the name ``open`` gets (``data``, ``com``, ...).
    Without a ``context`` (``hidra config check``) transport drivers are built but no socket can be opened.
    """

    def __init__(self, context: zmq.Context | None, options: Mapping[str, Mapping[str, Any]], source: str,
                 section: str, *, keys: Mapping[str, str] | None = None, security: Security | None = None) -> None:
        self.context = context
        self.security = security
        self._options = options
        self._source = source
        self._section = section
        self._keys = dict(keys or {})
        self._drivers: dict[str, Any] = {}

    def driver(self, endpoint: str) -> Any:
        scheme = endpoint.partition("://")[0]
        if scheme not in self._drivers:
            self._drivers[scheme] = create_driver("transport", scheme, self._options.get(scheme, {}),
                                                  self._source, f"{self._section}.transports.{scheme}")
        return self._drivers[scheme]

    def open(self, socket_type: int, endpoint: str, *, bind: bool, hwm: int,
             prepare: Callable[[zmq.Socket], None] | None = None, name: str | None = None,
             server_key: bytes | None = None) -> zmq.Socket:
        """Open ``endpoint``; with CURVE on, as the ``name`` socket (``security.plain`` and the allowed keys are
        per name): a CURVE server when bound, else a client of ``server_key`` (default: the storage key)."""
        assert self.context is not None, "Endpoints built without a context cannot open sockets"
        if self.security is not None and self.security.enabled:
            self.security.start(self.context)
            if name is None:
                raise ValueError(f"{endpoint}: with security.curve on, every socket is opened with a name")
            prepare = self.security.prepare(name, server=bind, server_key=server_key, then=prepare)
        try:
            return self.driver(endpoint).open_socket(self.context, socket_type, endpoint, bind=bind, hwm=hwm,
                                                     prepare=prepare)
        except OSError as exc:
            key = self._keys.get(endpoint)
            if bind and key and exc.errno == errno.EADDRINUSE:
                raise EndpointInUse(f"{key} {endpoint}: address already in use (another process holds it);"
                                    f" choose another with --set {key}=...") from None
            raise

    bound = staticmethod(Transport.endpoint_of)

    def close(self) -> None:
        """Stop the ZAP handler (before the context is destroyed, from the thread that opened the first socket)."""
        if self.security is not None:
            self.security.stop()


class StopFlag:
    """Set by SIGTERM/SIGINT (or by ``set()`` from tests and embedding code); loops poll it.

    A second signal ends the process at once: the state is safe on disk as after a crash (the sender's ledger
    is SQLite in WAL mode, the receiver confirms only what is durable), and what was unfinished is done again.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._signalled = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            # NOTE: an ignored SIGINT stays ignored, as shells expect of background jobs: `hidra up` starts
            # its children so, to keep Ctrl-C to itself and stop the sender before the receiver.
            if sig == signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
                continue
            signal.signal(sig, lambda signum, _frame: self._on_signal(signum))

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._signalled:
            log.warning("received %s again: stopping at once; unfinished files are done at the next start", name)
            os._exit(128 + signum)
        log.info("received %s: draining and stopping (send it again to stop at once)", name)
        self._signalled = True
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early when stopped; True if stopped."""
        return self._event.wait(timeout)
