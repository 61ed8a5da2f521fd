"""The REST server of a process: uvicorn in one daemon thread, on a socket bound by the process's own thread
(so a busy port fails start-up, naming its key, and the ready line can tell the real port at once)."""
from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from typing import Any, Callable, Mapping

from hidra_core.config import RestConfig, split_address
from hidra_core.host.kernel import EndpointInUse
from hidra_core.rest.app import View, create_app
from hidra_core.rest.guard import Guard
from hidra_core.rest.redact import redacted
from hidra_core.rest.snapshot import where
from hidra_core.rest.state import RecentProblems

__all__ = ["RestServer"]

log = logging.getLogger(__name__)

_STOP_WAIT_S = 5.0


class RestServer:
    """Serves ``process`` (a Sender or a Receiver: ``role``, ``config``, ``instance_config``, ``stop``) from the
    snapshots ``snapshot()`` returns; ``hurry`` stops the process without its drain (``POST /stop``)."""

    def __init__(self, process: Any, cfg: RestConfig, snapshot: Callable[[], Mapping[str, Any]],
                 hurry: Callable[[], None], ledger_path: str | None = None, backfill: Any = None) -> None:
        started = time.monotonic()
        view = View(role=process.role, snapshot=snapshot, where=where(process),
                    uptime=lambda: time.monotonic() - started,
                    config=redacted(process.instance_config, process.role), drain=process.stop.set,
                    stop=hurry, problems=RecentProblems(), ledger_path=ledger_path, token=cfg.token is not None,
                    backfill=backfill)
        self._listen(f"{process.role}.rest.address", cfg, view)

    @classmethod
    def of_view(cls, key: str, cfg: RestConfig, view: View) -> RestServer:
        """The API of any other long-running process (a plugin's service) from its own ``view``; ``key``: the
        config key of ``cfg.address``, named when the port is taken."""
        server = cls.__new__(cls)
        server._listen(key, cfg, view)
        return server

    def _listen(self, key: str, cfg: RestConfig, view: View) -> None:
        self.key = key
        self._sock = _listen(cfg.address, self.key)
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.problems = view.problems
        self._app = Guard(create_app(view), cfg.token)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        logging.getLogger().addHandler(self.problems)
        # NOTE: log_config None: uvicorn must not reconfigure the logging of the process it runs in
        config = uvicorn.Config(self._app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="hidra-rest", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except Exception:  # NOTE: the API is gone, the data path goes on
            log.exception("the REST server at %s stopped", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning("the REST server at %s did not stop within %.0f s", self.url, _STOP_WAIT_S)
        self._sock.close()
        logging.getLogger().removeHandler(self.problems)


def _listen(address: str, key: str) -> socket.socket:
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise EndpointInUse(f"{key} {address}: address already in use (another process holds it); choose"
                                f" another with --set {key}=...") from None
        raise EndpointInUse(f"{key} {address}: cannot listen there: {exc.strerror or exc}") from None
    return sock
