"""The hidra REST API of the broker and of each writer: ``GET /status``, ``/statistics``, ``/config``,
``/metrics`` (Prometheus), ``POST /drain``, ``POST /stop`` and ``/openapi.json``, served by the kernel's REST
server (the same routes, token and body checks as the sender's and the receiver's) from a thread of the process.

The buffer is a ``hidra up`` (a sender and a receiver): it has the kernel's own API already (``sender.rest``,
``receiver.rest``). The broker serves this API on a port of its own beside DBW's REST API, never inside it: DBW's
``GET /status``, ``/statistics`` and ``/stop`` mean other things there (and answer HTTP 200 for every error),
and its clients must keep getting exactly DBW's replies.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

from pydantic import BaseModel, Field

from hidra_core import RecentProblems, RestConfig, hide_secrets

__all__ = ["BROKER_API_PORT", "BrokerRestConfig", "Counters", "WriterRestConfig", "start_api"]

log = logging.getLogger(__name__)

#: the broker's hidra API; ``hidra databuffer up`` gives writer i (from 1) this port + i
BROKER_API_PORT = 50090


class BrokerRestConfig(RestConfig):
    """The broker's hidra API (status, statistics, config, drain and stop, Prometheus ``/metrics``)."""

    address: str = Field(f"127.0.0.1:{BROKER_API_PORT}", description="host:port to listen on, beside DBW's REST"
                         " API (port 0: a free one, the ready line tells which); anything but a loopback address"
                         " requires a token")


class WriterRestConfig(RestConfig):
    """The writer's hidra API (status, statistics, config, drain and stop, Prometheus ``/metrics``)."""

    # NOTE: port 0 by default: writers run several to a host on one broker, and a fixed port would let only the
    # first start
    address: str = Field("127.0.0.1:0", description="host:port to listen on (port 0: a free one, the ready line"
                         " tells which; `hidra databuffer up` gives writer i the broker's API port + i); anything"
                         " but a loopback address requires a token")


class Counters:
    """A process's counters and last events, written by its working thread and read by the REST thread: every
    read copies (atomic under the GIL), every write replaces one value."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.counts = dict.fromkeys(names, 0)
        self.last: dict[str, Any] = {}
        self.state = "running"

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def snapshot(self, gauges: Mapping[str, float]) -> dict[str, Any]:
        return {"state": self.state,
                "statistics": {"counters": dict(self.counts), "gauges": dict(gauges), "last": dict(self.last)}}


def start_api(role: str, cfg: RestConfig, config: BaseModel, where: Mapping[str, Any],
              snapshot: Callable[[], Mapping[str, Any]], drain: Callable[[], None],
              stop: Callable[[], None]) -> Any:
    """Serve ``role``'s API (``cfg``, the ``rest`` section of ``config``) from a thread; the server (``.url``,
    ``.stop()``), or None when ``rest.enabled`` is false."""
    if not cfg.enabled:
        return None
    from hidra_core import RestServer, RestView

    started = time.monotonic()
    view = RestView(role=role, snapshot=snapshot, where=where, uptime=lambda: time.monotonic() - started,
                    config=hide_secrets(config.model_dump(mode="json")), drain=drain, stop=stop,
                    problems=RecentProblems(), token=cfg.token is not None)
    server = RestServer.of_view("rest.address", cfg, view)
    server.start()
    return server
