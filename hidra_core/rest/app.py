"""The routes: what a process shows (``/status``, ``/statistics``, ``/config``, ``/clients``, ``/files``,
``/metrics``) and what it is told (``POST /drain``, ``POST /stop``); the OpenAPI spec at ``/openapi.json``."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from hidra_core._version import __version__
from hidra_core.rest.backfill import backfill_routes
from hidra_core.rest.guard import read_json
from hidra_core.rest.metrics import CONTENT_TYPE, render_metrics
from hidra_core.rest.page import add_page
from hidra_core.rest.state import RecentProblems

__all__ = ["View", "create_app"]

log = logging.getLogger(__name__)

#: how many files ``GET /files`` lists at most per request
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class View:
    """What the routes may read and call; everything here is safe from the REST thread."""

    role: str
    snapshot: Callable[[], Mapping[str, Any]]
    where: Mapping[str, Any]
    config: Mapping[str, Any]  # redacted
    uptime: Callable[[], float]
    drain: Callable[[], None]
    stop: Callable[[], None]
    problems: RecentProblems
    ledger_path: str | None = None  # the sender's
    token: bool = False
    backfill: Any = None  # the sender's (hidra_core.sender.backfill.Backfill)


def create_app(view: View) -> FastAPI:
    app = FastAPI(title=f"hidra {view.role}", version=__version__, docs_url=None, redoc_url=None,
                  description=f"Status, statistics, control and Prometheus metrics of a running hidra {view.role}.")
    _common_routes(app, view)
    if view.role == "sender":
        _sender_routes(app, view)
    if view.backfill is not None:
        backfill_routes(app, view.backfill)
    _document_token(app, view)
    add_page(app)
    return app


def _common_routes(app: FastAPI, view: View) -> None:
    @app.get("/status", summary="state, uptime, version, where data comes from or goes to, recent problems")
    async def status() -> dict[str, Any]:
        return {"role": view.role, "state": view.snapshot()["state"], "uptime_s": round(view.uptime(), 3),
                "version": __version__, "pid": os.getpid(), **view.where, "errors": view.problems.lines()}

    @app.get("/statistics", summary="the process's counters, queues and links (a snapshot of at most 1 s ago)")
    async def statistics() -> Mapping[str, Any]:
        return view.snapshot()["statistics"]

    @app.get("/config", summary="the effective configuration; secrets are shown as ***")
    async def config() -> Mapping[str, Any]:
        return view.config

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def metrics() -> Response:
        ledger = _ledger_counts(view.ledger_path) if view.ledger_path is not None else None
        return Response(render_metrics(view.role, view.snapshot(), ledger), media_type=CONTENT_TYPE)

    @app.post("/drain", status_code=202, summary="finish what is in flight (as SIGTERM does), then stop")
    async def drain(request: Request) -> dict[str, str]:
        await _empty_body(request)
        log.info("REST: drain requested by %s", _peer(request))
        view.drain()
        return {"state": "draining"}

    @app.post("/stop", status_code=202, summary="stop now; what is unfinished is done at the next start")
    async def stop(request: Request) -> dict[str, str]:
        await _empty_body(request)
        log.info("REST: stop requested by %s", _peer(request))
        view.stop()
        return {"state": "stopping"}


def _sender_routes(app: FastAPI, view: View) -> None:
    from hidra_core.sender.ledger import PROBLEMS, SEEN, SENT, STATE_NAMES

    by_name = {name: state for state, name in STATE_NAMES.items()}

    @app.get("/clients", summary="analysis client registrations and per-target counters (as `hidra clients`)")
    async def clients() -> Mapping[str, Any]:
        return view.snapshot()["clients"]

    @app.get("/files", summary="files of the ledger in a state (as `hidra ledger`), oldest change first")
    async def files(state: str | None = Query(None, description=f"one of {', '.join(by_name)}; default: the"
                                              " files not yet confirmed and the problems"),
                    limit: int = Query(100, ge=1, le=MAX_LIMIT)) -> dict[str, Any]:
        if state is not None and state not in by_name:
            raise HTTPException(422, f"unknown state {state!r}; known: {', '.join(by_name)}")
        states = (by_name[state],) if state is not None else (SEEN, SENT, *PROBLEMS)
        assert view.ledger_path is not None
        rows = _ledger_rows(view.ledger_path, states, limit)
        return {"files": [{"file_id": fid, "state": name, "attempts": attempts, "reason": reason}
                          for fid, name, attempts, reason in rows]}


def _ledger_rows(path: str, states: tuple[int, ...], limit: int) -> list[tuple[str, str, int, str | None]]:
    from hidra_core.sender.ledger import Ledger

    # NOTE: a connection of this thread's own, for this request only: it reads beside the router loop's
    # (SQLite WAL), and holding it open would keep an old snapshot of the ledger.
    book = Ledger(path, None, exclusive=False)
    try:
        return book.files(states, limit)
    finally:
        book.close()


def _ledger_counts(path: str) -> dict[str, int]:
    from hidra_core.sender.ledger import Ledger

    book = Ledger(path, None, exclusive=False)
    try:
        return book.counts()
    finally:
        book.close()


async def _empty_body(request: Request) -> None:
    """The control routes take no arguments: nothing, or an empty JSON object; anything else is refused."""
    if await read_json(request) not in (None, {}):
        raise HTTPException(400, "this route takes no arguments: send no body, or {}")


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client is not None else "?"


def _document_token(app: FastAPI, view: View) -> None:
    """The spec says that every operation needs the bearer token, when one is configured."""
    def spec() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            if view.token:
                schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http",
                                                                                     "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = spec  # type: ignore[method-assign]
