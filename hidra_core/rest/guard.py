"""Checks made before any route: the bearer token (when one is configured) and the size of a request body."""
from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable, MutableMapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from hidra_core.rest.page import PUBLIC_PREFIX

__all__ = ["DISCARD_AT_MOST", "MAX_BODY", "Guard", "read_json"]

#: largest request body accepted (no route takes more than an empty JSON object)
MAX_BODY = 64 * 1024
#: a larger body is read and thrown away up to this size before the 413 answer; beyond, the connection is closed
DISCARD_AT_MOST = 64 * 2**20

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Guard:
    """Pure ASGI middleware: 401 without the right ``Authorization: Bearer <token>`` on every path (``/metrics`` and
    ``/openapi.json`` too, and unknown paths, which tell nothing before the token is right) but the status page and
    its static files (which hold no data: the page asks the user for the token), 413 for a body announced larger
    than ``MAX_BODY``."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str | None) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        token = headers.get(b"authorization", b"")
        if self._expected is not None and not _public(scope) and not hmac.compare_digest(token, self._expected):
            refusal = _answer(401, "a bearer token is required: Authorization: Bearer <token> (sender.rest.token or"
                              " receiver.rest.token of this instance)", {"WWW-Authenticate": "Bearer"})
            await refusal(scope, receive, send)
            return
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            await _answer(400, "Content-Length is not a number")(scope, receive, send)
            return
        if int(length) > MAX_BODY:
            if int(length) <= DISCARD_AT_MOST:
                await _discard(receive)  # NOTE: a client still sending would otherwise get a reset, not the answer
            await _answer(413, f"request body too large: at most {MAX_BODY} bytes")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _public(scope: Scope) -> bool:
    """The page and its files; NOTE: everything under the prefix goes to the static files alone (no route there),
    which answer 404 for a path that leaves their directory (``/static/../status``)."""
    path = scope["path"]
    return scope["method"] in ("GET", "HEAD") and (path == "/" or path.startswith(PUBLIC_PREFIX))


def _answer(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or {"Connection": "close"})


async def _discard(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def read_json(request: Request) -> Any:
    """The request's JSON body (None for none); 413 past ``MAX_BODY``, 400 for what is not JSON."""
    body, size = b"", 0
    async for chunk in request.stream():  # NOTE: a chunked body has no Content-Length for the guard to check
        size += len(chunk)
        if size <= MAX_BODY:
            body += chunk
        elif size > DISCARD_AT_MOST:
            break
    if size > MAX_BODY:
        raise HTTPException(413, f"request body too large: at most {MAX_BODY} bytes")
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise HTTPException(400, f"request body is not JSON: {exc}") from None
