"""Checks made before any route: the bearer token (when one is configured) and the size of a request body."""
from __future__ import annotations

import hmac
from typing import Any, Awaitable, Callable, MutableMapping

from starlette.responses import JSONResponse

__all__ = ["MAX_BODY", "Guard"]

#: largest request body accepted (no route takes more than an empty JSON object)
MAX_BODY = 64 * 1024

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Guard:
    """Pure ASGI middleware: 401 without the right ``Authorization: Bearer <token>`` on every path (``/metrics`` and
    ``/openapi.json`` too, and unknown paths, which tell nothing before the token is right), 413 for a body
    announced larger than ``MAX_BODY``."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str | None) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self._expected is not None and not hmac.compare_digest(headers.get(b"authorization", b""),
                                                                  self._expected):
            answer = JSONResponse({"detail": "a bearer token is required: Authorization: Bearer <token>"
                                   " (sender.rest.token / receiver.rest.token of this instance)"},
                                  status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await answer(scope, receive, send)
            return
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            answer = JSONResponse({"detail": f"request body too large: at most {MAX_BODY} bytes"}, status_code=413,
                                  headers={"Connection": "close"})
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)
