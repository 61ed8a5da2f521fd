"""SIMPLON REST in FastAPI: ``/<module>/api/<version>/<task>/<param>``, value objects, commands."""
from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hidra_eiger.sim.dataserve import DataApp, Receive, Send
from hidra_eiger.sim.detector import Detector
from hidra_eiger.sim.params import ParamError

log = logging.getLogger(__name__)

__all__ = ["create_app"]

MODULES = ("detector", "filewriter", "monitor", "stream", "system", "simulator")


def _check(detector: Detector, module: str, version: str) -> None:
    if module not in MODULES:
        raise ParamError(404, f"unknown module {module!r}; known: {list(MODULES)}")
    if version != detector.version:
        raise ParamError(404, f"API version {version!r} is not served here; this DCU speaks {detector.version}")


async def _body(request: Request, *, required: bool) -> Any:
    raw = await request.body()
    if not raw and not required:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ParamError(400, f"request body is not JSON: {exc}") from None


def _value(body: Any) -> Any:
    if not isinstance(body, dict) or "value" not in body:
        raise ParamError(400, f'expected a JSON object {{"value": ...}}, got {body!r}')
    return body["value"]


class SimApp(FastAPI):
    """The SIMPLON app, with ``/data/...`` handed to a raw ASGI app before any FastAPI machinery.

    # NOTE: the data app needs uvicorn's own ``send`` (see dataserve) and no middleware between it and the wire
    """

    data: DataApp

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/data/"):
            await self.data(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _listing(detector: Detector, version: str, status: bool) -> Any:
    _check(detector, "filewriter", version)
    if status and detector.version == "1.6.0":
        raise ParamError(404, "status/files is served from SIMPLON 1.8 on; 1.6 lists at filewriter/api/1.6.0/files/")
    if detector.faults.listing():
        return JSONResponse(status_code=500, content={"error": "simulated listing failure"})
    names = detector.files.listing()
    if detector.version == "1.6.0":
        return names
    # NOTE: 1.8 answers a value object whose value is null, not [], when no file exists (eiger.md §3.3)
    return {"value": names or None, "value_type": "list", "access_mode": "r"}


def create_app(detector: Detector) -> FastAPI:
    app = SimApp(title="hidra-eiger-sim", description="SIMPLON REST of a simulated DECTRIS DCU")
    app.data = DataApp(detector.files, detector.faults, detector.knobs)

    @app.exception_handler(ParamError)
    async def _param_error(_request: Request, exc: ParamError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"error": exc.message})

    @app.get("/{module}/api/version")
    @app.get("/{module}/api/version/")
    def version(module: str) -> dict[str, str]:
        _check(detector, module, detector.version)
        return {"value": detector.version, "value_type": "string"}

    @app.get("/filewriter/api/{version}/files")
    @app.get("/filewriter/api/{version}/files/")
    def files(version: str) -> Any:
        return _listing(detector, version, status=False)

    @app.get("/filewriter/api/{version}/status/files")
    @app.get("/filewriter/api/{version}/status/files/")
    def status_files(version: str) -> Any:
        return _listing(detector, version, status=True)

    @app.get("/{module}/api/{version}/{task}/{param:path}")
    def get_param(module: str, version: str, task: str, param: str) -> Any:
        _check(detector, module, version)
        tree = detector.tree(module, task)
        if param.strip("/") == "keys":
            return list(tree.params)
        return tree.get(param.strip("/")).value_object()

    @app.put("/{module}/api/{version}/config")
    async def put_config_bulk(module: str, version: str, request: Request) -> list[str]:
        _check(detector, module, version)
        body = await _body(request, required=True)
        if not isinstance(body, dict):
            raise ParamError(400, f"bulk PUT expects {{name: {{\"value\": ...}}}}, got {body!r}")
        return detector.put_many(module, "config", body)

    @app.put("/{module}/api/{version}/config/{param:path}")
    async def put_param(module: str, version: str, param: str, request: Request) -> list[str]:
        _check(detector, module, version)
        value = _value(await _body(request, required=True))
        return detector.put(module, "config", param.strip("/"), value)

    @app.put("/{module}/api/{version}/command/{name}")
    async def command(module: str, version: str, name: str, request: Request) -> Any:
        _check(detector, module, version)
        # NOTE: trigger may carry a count time (only its syntax is checked); put_file carries the file
        body = await _body(request, required=False)
        # NOTE: trigger blocks until the exposures are sent; a worker thread keeps the event loop serving abort
        return await run_in_threadpool(detector.command, module, name, body)

    return app
