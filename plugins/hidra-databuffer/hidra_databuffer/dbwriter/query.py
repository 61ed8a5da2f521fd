"""``POST`` the ``data_api_request`` to the data API and check the response shape (databuffer.md §8)."""
from __future__ import annotations

import json
import logging
from typing import Any

import requests

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_DATA_API_URL", "QueryError", "check_response", "query_data_api"]

DEFAULT_DATA_API_URL = "http://127.0.0.1:10300/query"


class QueryError(RuntimeError):
    """The data API could not be reached or answered something that is not the §8 list."""


def query_data_api(url: str, data_api_request: str, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """The §8 response for one request; ``QueryError`` names what went wrong."""
    try:
        body = json.loads(data_api_request)
        response = requests.post(url, json=body, timeout=timeout_s)
    except requests.RequestException as exc:
        raise QueryError(f"data API {url} unreachable: {exc}") from None
    if not response.content:
        raise QueryError(f"data API {url} answered an empty body (HTTP {response.status_code})")
    try:
        answer = response.json()
    except ValueError as exc:
        raise QueryError(f"data API {url} answered no JSON (HTTP {response.status_code}): {exc}") from None
    return check_response(answer, url)


def check_response(answer: object, url: str = "data API") -> list[dict[str, Any]]:
    """Any dict is an error (``"status": 500`` a server error, else a wrong shape); a list of entries is fine."""
    if isinstance(answer, dict):
        if answer.get("status") == 500:
            raise QueryError(f"{url} reported a server error: {_short(answer)}")
        raise QueryError(f"{url} answered a dict instead of a list: {_short(answer)}")
    if not isinstance(answer, list):
        raise QueryError(f"{url} answered {type(answer).__name__} instead of a list")
    for index, entry in enumerate(answer):
        if not isinstance(entry, dict) or not isinstance(entry.get("channel"), dict) \
                or not isinstance(entry.get("configs", []), list) or not isinstance(entry.get("data", []), list):
            raise QueryError(f"{url} answered a list whose entry {index} is not a channel entry: "
                             f"{_short(entry)}")
    return answer


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 300 else text[:300] + "..."
