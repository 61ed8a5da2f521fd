"""The broker's REST API (databuffer.md §2): DBW's paths and replies, HTTP 200 for everything.

Every failure is ``{"state": "error", "status": "<text>"}`` with HTTP 200: bodies are read by hand, pulse ids are
path strings converted here, and FastAPI's own 404/405/422/500 answers are replaced by handlers.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests as http
import zmq
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from hidra_databuffer.api import Counters
from hidra_databuffer.broker.audit import AuditTrail
from hidra_databuffer.broker.config import BrokerConfig
from hidra_databuffer.broker.requests import build_requests, check_channels
from hidra_databuffer.broker.state import BrokerState, Ignored, ParameterError, Run, StopError
from hidra_databuffer.broker.transport import RequestSender

__all__ = ["COUNTERS", "Broker", "create_app", "now_text"]

log = logging.getLogger(__name__)


#: what the broker counts for hidra's ``GET /statistics`` and ``/metrics``
COUNTERS = ("parameters", "starts", "runs", "requests_audited", "requests_sent", "refused", "send_errors")


def now_text() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def ok(**fields: Any) -> JSONResponse:
    return JSONResponse({"state": "ok", **fields})


def error(text: str) -> JSONResponse:
    return JSONResponse({"state": "error", "status": text})


def pulse_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"pulse id must be an integer, got {text!r}") from None
    if value < 0:
        raise ValueError(f"pulse id must not be negative, got {value}")
    return value


@dataclass
class Broker:
    config: BrokerConfig
    channels: list[str]
    audit: AuditTrail
    sender: RequestSender
    state: BrokerState
    counters: Counters = field(default_factory=lambda: Counters(COUNTERS))

    async def stop_pulse(self, stop: int) -> Response:
        outcome = self.state.stop_pulse(stop)
        if isinstance(outcome, Ignored):
            log.info("stop ignored: %s", outcome.reason)
            return Response()
        requests = build_requests(outcome.parameters, outcome.start, outcome.stop, self.channels, self.config,
                                  time.time())
        try:
            await asyncio.wrap_future(self.sender.submit(requests, self.audit,
                                                         send=not self.config.audit_trail_only))
        except Exception as exc:
            self.counters.add("send_errors")
            return self._send_failed(outcome, exc)
        self.state.commit(outcome, requests[-1], now_text())
        self._count(outcome, len(requests))
        if self.config.epics_writer_url:
            notify_epics(self.config.epics_writer_url, requests[0], outcome.parameters)
        return Response()

    def _count(self, run: Run, n: int) -> None:
        self.counters.add("runs")
        self.counters.add("requests_audited", n)
        if not self.config.audit_trail_only:
            self.counters.add("requests_sent", n)
        self.counters.last = {"output_file": run.parameters["output_file"], "start_pulse_id": run.start,
                              "stop_pulse_id": run.stop, "time": time.time()}

    def _send_failed(self, outcome: Run, exc: Exception) -> Response:
        if isinstance(exc, OSError):  # NOTE: F5: no audit line -> nothing sent
            log.error("audit trail %s: %s; nothing sent", self.audit.path, exc)
            return error(f"cannot write the audit trail {self.audit.path}: {exc}; nothing sent")
        if isinstance(exc, zmq.Again):
            log.error("request [%d, %d] not sent: no writer: %s", outcome.start, outcome.stop, exc)
            return error(f"no writer took the request within {self.config.send_timeout_ms} ms: {exc}")
        log.error("request [%d, %d] not sent", outcome.start, outcome.stop, exc_info=exc)
        return error(f"request not sent: {type(exc).__name__}: {exc}")


def notify_epics(url: str, request: dict[str, Any], parameters: dict[str, Any]) -> None:
    """The optional EPICS side-channel: PUT from a background thread, errors only logged (§4)."""
    body = {"range": json.loads(request["data_api_request"])["range"], "parameters": parameters}

    def put() -> None:
        try:
            http.put(url, json=body, timeout=10).raise_for_status()
        except Exception as exc:  # NOTE: a side-channel never fails the run
            log.warning("EPICS writer %s: %s", url, exc)

    threading.Thread(target=put, name="broker-epics", daemon=True).start()


def create_app(broker: Broker) -> FastAPI:
    app = FastAPI(title="hidra-databuffer-broker", docs_url=None, redoc_url=None, openapi_url=None)
    lock = asyncio.Lock()  # NOTE: a stop awaits its send; no other request may change the state meanwhile
    _state_routes(app, broker.state, broker.counters, lock)
    _pulse_routes(app, broker, lock)
    _install_error_handlers(app)
    return app


def _state_routes(app: FastAPI, state: BrokerState, counters: Counters, lock: asyncio.Lock) -> None:
    @app.get("/status")
    async def status() -> Response:
        return ok(status=state.status)

    @app.post("/parameters")
    async def parameters(request: Request) -> Response:
        try:
            body = await request.json()
        except Exception as exc:
            counters.add("refused")
            return error(f"parameters: the body must be a JSON object ({type(exc).__name__}: {exc})")
        async with lock:
            try:
                if isinstance(body, dict) and body.get("channels") is not None:
                    if not isinstance(body["channels"], list):
                        raise ParameterError("parameters 'channels' must be a list of channel names")
                    check_channels(body["channels"], "parameters 'channels'")
                echo = state.set_parameters(body)
            except ValueError as exc:
                counters.add("refused")
                return error(str(exc))
            counters.add("parameters")
            return ok(status=state.status, parameters=echo)

    @app.get("/stop")
    async def stop() -> Response:
        async with lock:
            state.clear()
        return ok(status="stopped")

    @app.get("/kill")
    async def kill() -> Response:
        log.warning("GET /kill: exiting now")
        os._exit(0)

    @app.get("/statistics")
    async def statistics() -> Response:
        return ok(status=state.status, statistics=state.statistics.as_dict())


def _pulse_routes(app: FastAPI, broker: Broker, lock: asyncio.Lock) -> None:
    @app.put("/start_pulse_id/{value}")
    async def start_pulse_id(value: str) -> Response:
        try:
            number = pulse_id(value)
        except ValueError as exc:
            broker.counters.add("refused")
            return error(str(exc))
        async with lock:
            broker.state.start_pulse(number)
        broker.counters.add("starts")
        return Response()

    @app.put("/stop_pulse_id/{value}")
    async def stop_pulse_id(value: str) -> Response:
        try:
            number = pulse_id(value)
            async with lock:
                return await broker.stop_pulse(number)
        except (ValueError, StopError) as exc:
            broker.counters.add("refused")
            return error(str(exc))


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        detail = getattr(exc, "detail", None) or str(exc)
        return error(f"{request.method} {request.url.path}: {detail}")

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return error(f"{type(exc).__name__}: {exc}")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, http_error)
    app.add_exception_handler(Exception, unexpected)
