"""The data buffer's HTTP API (databuffer.md §8, §12): ``POST /query`` in the PSI data-API shape, plus
``GET /channels``, ``GET /status`` and ``POST /mapping``; served by uvicorn in a thread of the receiver.

Every error is a JSON **dict** with a ``status`` (DBW-style writers treat any dict as a failed query and write
``.err``): 400 for a request that cannot be answered, 413 for a range over the query limits, 404 for unknown
channels when strict, 500 for anything unexpected. FastAPI's own 422 never reaches a client.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hidra_databuffer import rangeformat
from hidra_databuffer._decode import ChannelConfig, raw_size, value_json
from hidra_databuffer.store import ChannelSelection, Event, Hit, Pulse, Store

__all__ = ["QueryError", "QueryLimits", "QueryServer", "build_app", "global_date"]

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "sf-databuffer"
EVENT_FIELDS = ("pulseId", "globalDate", "globalSeconds", "value", "shape", "channel")
CONFIG_FIELDS = ("type", "shape")
_DEFAULT_EVENT_FIELDS = ["pulseId", "globalDate", "value", "shape"]


class QueryError(Exception):
    """A request answered with an error dict (``status`` in it) and that HTTP status."""

    def __init__(self, status: int, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"status": status, "error": error, **extra}


@dataclass(frozen=True)
class QueryLimits:
    wait_s: float
    max_pulses: int
    max_bytes: int
    strict: bool


@dataclass(frozen=True)
class Query:
    channels: list[tuple[str, str]]  # (name, backend) in request order
    start: int
    end: int
    event_fields: list[str]
    config_fields: list[str]


# --- request parsing ---------------------------------------------------------------------------------------------
def _object(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise QueryError(400, f"the body must be a JSON object, not {type(request).__name__}")
    return request


def _pulse_range(request: dict[str, Any]) -> tuple[int, int]:
    """The inclusive [start, end] of ``range`` (``startInclusive``/``endInclusive`` default true)."""
    rng = request.get("range")
    if not isinstance(rng, dict):
        raise QueryError(400, "'range' with 'startPulseId' and 'endPulseId' is required")
    bounds = []
    for key in ("startPulseId", "endPulseId"):
        value = rng.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise QueryError(400, f"range.{key} must be an integer pulse id, got {value!r}")
        bounds.append(value)
    for key in ("startInclusive", "endInclusive"):
        if not isinstance(rng.get(key, True), bool):
            raise QueryError(400, f"range.{key} must be true or false")
    start = bounds[0] + (0 if rng.get("startInclusive", True) else 1)
    end = bounds[1] - (0 if rng.get("endInclusive", True) else 1)
    if bounds[1] < bounds[0]:
        raise QueryError(400, f"range.endPulseId {bounds[1]} < range.startPulseId {bounds[0]}")
    return start, end


def _channels(request: dict[str, Any]) -> list[tuple[str, str]]:
    channels = request.get("channels")
    if not isinstance(channels, list):
        raise QueryError(400, "'channels' must be a list of {name, backend} objects or names")
    found = []
    for entry in channels:
        name, backend = (entry, DEFAULT_BACKEND) if isinstance(entry, str) else (
            (entry.get("name"), entry.get("backend", DEFAULT_BACKEND)) if isinstance(entry, dict) else (None, None))
        if not isinstance(name, str) or not name or not isinstance(backend, str):
            raise QueryError(400, f"channel {entry!r} is neither a name nor a {{name, backend}} object")
        found.append((name, backend))
    return found


def _fields(request: dict[str, Any], key: str, allowed: tuple[str, ...], default: list[str]) -> list[str]:
    fields = request.get(key, default)
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise QueryError(400, f"'{key}' must be a list of names")
    unknown = [f for f in fields if f not in allowed]
    if unknown:
        raise QueryError(400, f"{key} {unknown} not supported (supported: {list(allowed)})")
    return fields


def parse_query(body: bytes) -> Query:
    request = _object(body)
    response = request.get("response", {})
    if not isinstance(response, dict):
        raise QueryError(400, "'response' must be an object")
    if response.get("format", "json") != "json" or response.get("compression", "none") != "none":
        raise QueryError(400, f"only response format 'json' with compression 'none' is served, not {response}")
    start, end = _pulse_range(request)
    return Query(_channels(request), start, end,
                 _fields(request, "eventFields", EVENT_FIELDS, _DEFAULT_EVENT_FIELDS),
                 _fields(request, "configFields", CONFIG_FIELDS, list(CONFIG_FIELDS)))


# --- answers -----------------------------------------------------------------------------------------------------
_offset_cache: dict[int, str] = {}


def global_date(sec: int, ns: int) -> str:
    """ISO-8601 in local time with nine fractional digits and the UTC offset, as the PSI data API writes it."""
    sec, ns = sec + ns // 1_000_000_000, ns % 1_000_000_000
    prefix = _offset_cache.get(sec)
    if prefix is None:
        local = time.localtime(sec)
        offset = local.tm_gmtoff
        sign = "+" if offset >= 0 else "-"
        hours, minutes = divmod(abs(offset) // 60, 60)
        prefix = f"{time.strftime('%Y-%m-%dT%H:%M:%S', local)}.%09d{sign}{hours:02d}:{minutes:02d}"
        if len(_offset_cache) > 100_000:
            _offset_cache.clear()
        _offset_cache[sec] = prefix
    return prefix % ns


def _date_of(pulse: Pulse) -> str:
    pulse.date = global_date(pulse.sec, pulse.ns)
    return pulse.date


def _config_json(config: ChannelConfig, fields: list[str]) -> dict[str, Any]:
    return {f: config.type if f == "type" else list(config.shape) for f in fields}


def _event(pulse: Pulse, event: Event, fields: list[str], name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        if f == "pulseId":
            out[f] = pulse.pulse_id
        elif f == "globalDate":
            out[f] = pulse.date or _date_of(pulse)
        elif f == "globalSeconds":
            out[f] = f"{pulse.sec + pulse.ns // 1_000_000_000}.{pulse.ns % 1_000_000_000:09d}"
        elif f == "value":
            out[f] = value_json(event.config, pulse.blob, event.offset, event.size)
        elif f == "shape":
            out[f] = list(event.config.shape)
        else:
            out[f] = name
    return out


_CHUNK_BYTES = 1 << 20


def _events_json(hits: list[Hit], fields: list[str], name: str) -> Iterator[str]:
    """The events as JSON text, encoded a chunk at a time: one ``dumps`` per event costs more than the event for
    scalars, while a whole range of images as Python lists would take gigabytes."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for pulse, event in hits:
        chunk.append(_event(pulse, event, fields, name))
        size += raw_size(event.config, event.size) + 64
        if size > _CHUNK_BYTES:
            yield json.dumps(chunk, separators=(",", ":"))[1:-1]
            chunk, size = [], 0
    if chunk:
        yield json.dumps(chunk, separators=(",", ":"))[1:-1]


def _channel_json(selection: ChannelSelection, backend: str, query: Query) -> str:
    head = json.dumps({"channel": {"name": selection.name, "backend": backend},
                       "configs": _configs_json(selection, query)},
                      separators=(",", ":"))
    events = ",".join(_events_json(selection.hits, query.event_fields, selection.name))
    return f'{head[:-1]},"data":[{events}]}}'


def select_query(store: Store, limits: QueryLimits, query: Query) -> list[ChannelSelection]:
    """The events of the range per channel; raises ``QueryError`` for a range over the limits or unknown channels
    (strict). Whatever form the answer then takes, these checks are the same."""
    if query.end - query.start + 1 > limits.max_pulses:
        raise QueryError(413, f"range of {query.end - query.start + 1} pulses exceeds max_query_pulses"
                         f" {limits.max_pulses}; split it")
    _, newest = store.window()
    if newest is None or newest < query.end:  # NOTE: the end may not have been recorded yet
        store.wait_for(query.end, limits.wait_s)
    selections = store.select([name for name, _ in query.channels], query.start, query.end)
    unknown = [s.name for s in selections if not s.known]
    if unknown and limits.strict:
        raise QueryError(404, f"unknown channels: {unknown}", unknown_channels=unknown)
    size = sum(s.raw_bytes() for s in selections) if "value" in query.event_fields else 0
    if size > limits.max_bytes:
        raise QueryError(413, f"range holds {size} bytes of values, over max_query_bytes {limits.max_bytes};"
                         " split it")
    return selections


def answer_query(store: Store, limits: QueryLimits, query: Query) -> str:
    """The §8 response body as JSON text."""
    selections = select_query(store, limits, query)
    parts = [_channel_json(s, backend, query) for s, (_, backend) in zip(selections, query.channels)]
    return "[" + ",".join(parts) + "]"


def _configs_json(selection: ChannelSelection, query: Query) -> list[dict[str, Any]]:
    configs: list[dict[str, Any]] = []
    for config in selection.configs:  # NOTE: a change of encoding or compression alone is no new config to a client
        if (shown := _config_json(config, query.config_fields)) not in configs:
            configs.append(shown)
    return configs


def answer_binary(selections: list[ChannelSelection], query: Query) -> Iterator[bytes | memoryview]:
    """The same answer in ``rangeformat``: raw little-endian values, event fields as in the JSON."""
    fields = [f for f in query.event_fields if f != "value"]
    yield rangeformat.preamble()
    try:
        for selection, (_, backend) in zip(selections, query.channels):
            yield rangeformat.encode_channel({"name": selection.name, "backend": backend},
                                             _configs_json(selection, query))
            rows = ((_event(pulse, event, fields, selection.name), event.config, pulse.blob, event.offset,
                     event.size) for pulse, event in selection.hits)
            yield from rangeformat.encode_events(rows, "value" in query.event_fields)
    except Exception as exc:  # NOTE: HTTP 200 is out already: the error goes in the stream, and the reader fails
        log.exception("binary query answer failed")
        yield rangeformat.encode_error(500, f"{type(exc).__name__}: {exc}")
        return
    yield rangeformat.encode_end()


def _mapping(store: Store, body: bytes) -> list[dict[str, Any]]:
    start, end = _pulse_range(_object(body))
    return [{"pulseId": pid, "globalSeconds": f"{sec}.{ns:09d}", "globalDate": global_date(sec, ns)}
            for pid, sec, ns in store.mapping(start, end)]


def _channels_json(store: Store) -> list[dict[str, Any]]:
    return [{"name": name, "backend": DEFAULT_BACKEND, **_config_json(history[-1][1], list(CONFIG_FIELDS)),
             "encoding": history[-1][1].encoding, "compression": history[-1][1].compression,
             "history": [{"pulseId": pid, "type": c.type, "shape": list(c.shape), "encoding": c.encoding,
                          "compression": c.compression} for pid, c in history]}
            for name, history in store.channels().items()]


# --- the app -----------------------------------------------------------------------------------------------------
def _window_headers(store: Store) -> dict[str, str]:
    oldest, newest = store.window()
    if oldest is None or newest is None:
        return {}
    return {"X-Databuffer-Oldest": str(oldest), "X-Databuffer-Newest": str(newest)}


def _error(status: int, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": status, "error": error}, status_code=status, headers=headers)


MAX_REQUEST_BYTES = 1 << 20  # a request names at most a few hundred channels


async def _body(request: Request) -> bytes | Response:
    """The request body, or a 413 answer once it passes ``MAX_REQUEST_BYTES`` (never read whole into memory)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            return _error(413, f"request body over {MAX_REQUEST_BYTES} bytes")
    return bytes(body)


async def _pieces(pieces: list[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    for piece in pieces:
        yield piece


def _binary_response(selections: list[ChannelSelection], query: Query, headers: dict[str, str]) -> Response:
    """The binary answer with a Content-Length: the pieces (views of the stored frames, or decoded values) are
    made before the answer starts, so the length is known and the reader gets no chunked framing."""
    pieces = list(answer_binary(selections, query))
    length = str(sum(len(piece) for piece in pieces))
    return StreamingResponse(_pieces(pieces), media_type=rangeformat.CONTENT_TYPE,
                             headers={**headers, "Content-Length": length})


def build_app(store: Store, limits: QueryLimits) -> FastAPI:
    app = FastAPI(title="hidra databuffer query API", docs_url=None, redoc_url=None, openapi_url=None)

    def guarded(work: Any, *args: Any) -> Response:
        try:
            return work(*args)
        except QueryError as exc:
            return JSONResponse(exc.body, status_code=exc.status, headers=_window_headers(store))
        except Exception as exc:
            log.exception("query failed")
            return _error(500, f"{type(exc).__name__}: {exc}", _window_headers(store))

    def query(body: bytes, binary: bool) -> Response:
        parsed = parse_query(body)
        if binary:  # NOTE: only a client that asked for it in Accept (our writer); the body stays the §8 JSON
            return _binary_response(select_query(store, limits, parsed), parsed, _window_headers(store))
        text = answer_query(store, limits, parsed)
        return Response(text, media_type="application/json", headers=_window_headers(store))

    @app.post("/query")
    async def post_query(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        # NOTE: a thread of the pool, not the event loop: a query may wait query_wait_s for future pulses
        binary = rangeformat.accepts(request.headers.get("accept", ""))
        return await run_in_threadpool(guarded, query, body, binary)

    @app.post("/mapping")
    async def post_mapping(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        return await run_in_threadpool(guarded, lambda: JSONResponse(_mapping(store, body)))

    @app.get("/channels")
    def get_channels() -> Response:
        return guarded(lambda: JSONResponse(_channels_json(store)))

    @app.get("/status")
    def get_status() -> Response:
        return guarded(lambda: JSONResponse({"state": "ok", **store.status()}, headers=_window_headers(store)))

    _error_handlers(app)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Errors of FastAPI's own making (404, 405, 422) as dict bodies too."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"{type(exc).__name__}: {exc}")


class QueryServer:
    """uvicorn serving ``app`` on ``host:port`` (0: a free port) from a daemon thread."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"databuffer query API cannot listen on {self.host}:{self.port}"
                          f" (http_host/http_port): {exc.strerror}") from None
        self._sock, self.port = sock, sock.getsockname()[1]
        # NOTE: log_config None: uvicorn must not reconfigure the logging of the process it runs in
        # NOTE: a query waiting for future pulses must not hold up the receiver's stop for long
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="databuffer-query-api")
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"databuffer query API did not start on {self.url}")
            time.sleep(0.01)  # NOTE: uvicorn offers no start event to wait on
        log.info("databuffer query API ready: %s/query", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10.0)
            if self._thread.is_alive():
                log.warning("databuffer query API did not stop within 10 s")
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None
