"""The live status page: ``GET /`` and its script and style under ``/static/``, files shipped in the package.

The page itself holds no data: its script polls ``/status``, ``/statistics``, ``/clients`` and ``/files`` with the
bearer token the user gives it, so the page and its static files are served without the token (see guard.py).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

__all__ = ["PUBLIC_PREFIX", "add_page"]

STATIC = Path(__file__).with_name("static")
#: where the page's script and style are served, without the token
PUBLIC_PREFIX = "/static/"
#: NOTE: the page loads only its own script and style and talks only to its own origin; data from the API (file
#: names, log lines) is shown as text, and this policy stops anything else should that ever slip
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:;"
          " base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def add_page(app: FastAPI) -> None:
    index = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(index, headers={"Content-Security-Policy": POLICY, "Cache-Control": "no-cache",
                                            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    app.mount(PUBLIC_PREFIX.rstrip("/"), StaticFiles(directory=STATIC), name="static")
