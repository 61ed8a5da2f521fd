"""``POST`` the ``data_api_request`` to the data API and check the response shape (databuffer.md §8)."""
from __future__ import annotations

import json
import logging
import warnings
from typing import Any

import numpy as np
import requests

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_DATA_API_URL", "QueryError", "check_response", "decode_body", "query_data_api"]

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
        answer = decode_body(response.content)
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


_VALUE = b'"value":'
_NUMERIC = b"0123456789,- \t\r\n"
_FLOATISH = b".eE+"
# NOTE: below this many bytes a list goes through json as usual; above it the text is parsed straight into numpy
_FAST_MIN = 1024
_I64 = np.iinfo(np.int64)
_MARK = "__hidra_array__"


def decode_body(content: bytes) -> Any:
    """``json.loads`` of a §8 body, except that long flat numeric ``value`` lists become numpy arrays.

    A 512×512 image is 262 144 numbers: through ``json`` and Python ints it costs ~75 ns each, parsed from the
    text with numpy ~25 ns, and the HDF5 step then copies arrays instead of converting lists. Only flat lists of
    plain numbers take this path; anything else (nested, strings, huge integers) is left to ``json``.
    """
    parts: list[bytes] = []
    arrays: list[np.ndarray[Any, Any]] = []
    pos = scan = 0
    while (key := content.find(_VALUE, scan)) >= 0:
        start = key + len(_VALUE)
        while content[start:start + 1] in (b" ", b"\t", b"\r", b"\n"):
            start += 1
        end = content.find(b"]", start) if content[start:start + 1] == b"[" else -1
        array = _numbers(content[start + 1:end]) if end - start > _FAST_MIN else None
        scan = max(start, end)
        if array is None:
            continue
        parts += [content[pos:start], b'{"%s": %d}' % (_MARK.encode(), len(arrays))]
        arrays.append(array)
        pos = end + 1
    if not arrays:
        return json.loads(content)
    parts.append(content[pos:])
    answer = json.loads(b"".join(parts))
    _put_arrays(answer, arrays)
    return answer


def _numbers(run: bytes) -> np.ndarray[Any, Any] | None:
    rest = run.translate(None, _NUMERIC)
    if rest.translate(None, _FLOATISH):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # NOTE: numpy only warns about text it could not read to the end
            array = np.fromstring(run, dtype=np.float64 if rest else np.int64, sep=",")
    except (ValueError, DeprecationWarning):
        return None  # NOTE: malformed text: let json say why
    if array.size != run.count(b",") + 1:
        return None
    # NOTE: strtoll saturates on overflow (uint64 near 2**64): such lists go through json, which is exact
    if not rest and ((array == _I64.max).any() or (array == _I64.min).any()):
        return None
    return array


def _put_arrays(answer: object, arrays: list[np.ndarray[Any, Any]]) -> None:
    if not isinstance(answer, list):
        return
    for entry in answer:
        for event in entry.get("data", []) if isinstance(entry, dict) else []:
            value = event.get("value") if isinstance(event, dict) else None
            if isinstance(value, dict) and set(value) == {_MARK}:
                event["value"] = arrays[value[_MARK]]
