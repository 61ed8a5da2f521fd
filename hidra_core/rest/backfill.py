"""``POST /backfill`` and ``GET /backfill`` of a sender: send a tree that is already there (``hidra backfill``)."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from hidra_core.rest.guard import read_json

__all__ = ["backfill_routes"]

log = logging.getLogger(__name__)

_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["path"], "additionalProperties": False,
    "properties": {"path": {"type": "string", "description": "absolute directory inside the source's root"}}}}}}}


def backfill_routes(app: FastAPI, backfill: Any) -> None:
    """The routes of ``backfill`` (a ``hidra_core.sender.backfill.Backfill``)."""
    from hidra_core.sender.backfill import BackfillRefused

    @app.post("/backfill", status_code=202, openapi_extra=_BODY,
              summary="send every file below path that the ledger does not hold as stored (resumable);"
              " joins the running backfill of the same path")
    async def start(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) != {"path"}:
            raise HTTPException(400, 'the body must be {"path": "/absolute/dir/inside/the/source/root"}')
        try:
            answer: dict[str, Any] = backfill.start(body["path"])
        except BackfillRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        log.info("REST: backfill of %s %s by %s", answer["path"], "joined" if answer["joined"] else "started",
                 request.client.host if request.client is not None else "?")
        return answer

    @app.get("/backfill", summary="progress of the last backfill: files and bytes found, already stored, queued,"
             " stored since, problems")
    async def progress() -> dict[str, Any]:
        report: dict[str, Any] = backfill.report()
        return report
