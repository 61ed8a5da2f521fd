"""``POST`` the ``data_api_request`` to the data API and check the response shape (databuffer.md §8)."""
from __future__ import annotations

import http.client
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests

from hidra_databuffer import rangeformat

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_DATA_API_URL", "QueryError", "SplitLimits", "TooLarge", "check_response", "decode_body",
           "query_parts"]

DEFAULT_DATA_API_URL = "http://127.0.0.1:10300/query"


class QueryError(RuntimeError):
    """The data API could not be reached or answered something that is not the §8 list."""


@dataclass(frozen=True)
class SplitLimits:
    """How a long range is cut into sub-queries (``WriterConfig.query_max_pulses`` / ``query_max_bytes``)."""

    max_pulses: int = 10_000
    max_bytes: int = 64 << 20
    binary: bool = True  # NOTE: ask for rangeformat's answer (a server without it answers JSON anyway)


class TooLarge(QueryError):
    """HTTP 413: the data API refuses the range as too large; a shorter one may do."""


def query_parts(url: str, data_api_request: str, timeout_s: float | None = None,
                limits: SplitLimits = SplitLimits()) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """The §8 response of a pulse range as consecutive sub-ranges' responses, each with whether it is the last.

    The first sub-query asks for ``_PROBE_PULSES``, later ones for about ``limits.max_bytes`` of answer (from the
    bytes per pulse so far), never more than ``limits.max_pulses``; a 413 halves the sub-range. A range short
    enough goes out as the request body unchanged. A body that names no pulse range is sent as one query.
    """
    body = json.loads(data_api_request)
    bounds = _bounds(body)
    buffers = rangeformat.Buffers()
    if bounds is None:
        yield _post(url, body, timeout_s, limits.binary, buffers)[0], True
        return
    start, end = bounds
    size, ceiling, pos = min(_PROBE_PULSES, limits.max_pulses), limits.max_pulses, start
    while pos <= end:
        stop = min(end, pos + size - 1)
        whole = pos == start and stop == end
        try:
            part, nbytes = _post(url, body if whole else _sub_request(body, pos, stop), timeout_s, limits.binary,
                                 buffers)
        except TooLarge as exc:
            if stop == pos:
                raise QueryError(f"{exc} (a single pulse, {pos}, is too large for the data API)") from None
            ceiling = stop - pos
            size = max(1, (stop - pos + 1) // 2)
            log.info("data API refused pulses %d..%d as too large; asking for %d at a time", pos, stop, size)
            continue
        yield part, stop == end
        per_pulse = max(1.0, nbytes / (stop - pos + 1))
        size = max(1, min(ceiling, limits.max_pulses, int(limits.max_bytes / per_pulse)))
        pos = stop + 1


_PROBE_PULSES = 100


def _bounds(body: object) -> tuple[int, int] | None:
    """The inclusive pulse range of a request body, ``None`` when it names none (or an empty/reversed one)."""
    rng = body.get("range") if isinstance(body, dict) else None
    if not isinstance(rng, dict):
        return None
    first, last = rng.get("startPulseId"), rng.get("endPulseId")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (first, last)):
        return None
    start = first + (0 if rng.get("startInclusive", True) is True else 1)  # type: ignore[operator]
    end = last - (0 if rng.get("endInclusive", True) is True else 1)  # type: ignore[operator]
    return (start, end) if start <= end else None


def _sub_request(body: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    rng = {**body["range"], "startPulseId": start, "endPulseId": end}
    for flag in ("startInclusive", "endInclusive"):  # NOTE: the sub-range's bounds are inclusive already
        if flag in rng:
            rng[flag] = True
    return {**body, "range": rng}


def _post(url: str, body: Any, timeout_s: float | None, binary: bool,
          buffers: rangeformat.Buffers | None = None) -> tuple[list[dict[str, Any]], int]:
    """One query: the checked response and its size in bytes. May ask for the binary form; takes JSON always."""
    accept = rangeformat.ACCEPT if binary else "application/json"
    try:
        with requests.post(url, json=body, timeout=timeout_s, stream=True, headers={"Accept": accept}) as response:
            kind = response.headers.get("Content-Type", "")
            if response.status_code == 200 and kind.split(";")[0].strip() == rangeformat.MEDIA_TYPE:
                return _binary(url, response, buffers)
            content = response.content
    except requests.RequestException as exc:
        raise QueryError(f"data API {url} unreachable: {exc}") from None
    if response.status_code == 413:
        raise TooLarge(f"data API {url} answered 413: {content[:300]!r}")
    if not content:
        raise QueryError(f"data API {url} answered an empty body (HTTP {response.status_code})")
    try:
        answer = decode_body(content)
    except ValueError as exc:
        raise QueryError(f"data API {url} answered no JSON (HTTP {response.status_code}): {exc}") from None
    return check_response(answer, url), len(content)


def _binary(url: str, response: requests.Response,
            buffers: rangeformat.Buffers | None) -> tuple[list[dict[str, Any]], int]:
    # NOTE: urllib3's own readinto copies through read(); the http.client response under it reads straight into
    # the buffer (Content-Length or chunked alike). Content-Encoding is never set on this answer.
    raw = getattr(response.raw, "_fp", None)
    readinto = getattr(raw, "readinto", None) if not response.headers.get("Content-Encoding") else None
    reader = rangeformat.Reader(lambda n: response.raw.read(min(n, _READ_BYTES)), readinto, buffers)
    try:
        answer = reader.answer()
    except rangeformat.ServerError as exc:
        return check_response(exc.body, url), 0  # NOTE: raises: a dict is an error, as in the JSON form
    except rangeformat.FormatError as exc:
        raise QueryError(f"data API {url}: {exc}") from None
    except (OSError, http.client.HTTPException) as exc:  # NOTE: raised by http.client itself, not by requests
        raise QueryError(f"data API {url}: binary answer broken off after {reader.nbytes} bytes: {exc}") from None
    return check_response(answer, url), reader.nbytes


_READ_BYTES = 16 << 20


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
