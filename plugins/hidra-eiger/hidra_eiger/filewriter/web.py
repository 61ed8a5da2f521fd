"""HTTP plumbing shared by the ``eiger`` source and the ``http`` fetcher: sessions with timeouts, and failures as
``OSError`` s whose errno tells the kernel whether to retry (``ETIMEDOUT``/``EIO``/``EAGAIN`` are retried)."""
from __future__ import annotations

import errno
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

__all__ = ["HTTP_ERRORS", "HttpStatusError", "as_oserror", "get_json", "new_session", "status_error"]

#: what a request or a streamed body may raise besides ``OSError`` (urllib3's own errors escape ``raw.read``)
HTTP_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError)


class HttpStatusError(OSError):
    """The server answered, with an unexpected status (its errno says whether a retry may help)."""


def new_session() -> requests.Session:
    """One session per DCU and thread; requests' own retries are off (ours count).

    A few kept-alive connections, not one: the fetch worker removes file N (HEAD, DELETE) while the streamed GET of
    file N+1 still holds its connection, and a pool of one would open and discard a connection each time."""
    session = requests.Session()
    # NOTE: a beamline host's http_proxy must not route DCU traffic (plain HTTP on a private network)
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def as_oserror(exc: BaseException, url: str) -> OSError:
    """A transport failure (refused, reset, timed out, cut short) as a retryable ``OSError`` naming the URL."""
    timeout = isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
    code = errno.ETIMEDOUT if timeout else errno.EIO
    return OSError(code, f"{url}: {type(exc).__name__}: {exc}")


def status_error(response: requests.Response) -> HttpStatusError:
    """An unexpected HTTP status as an ``OSError``: 5xx and 429 are retryable, other codes are not."""
    code = response.status_code
    reason = f"{response.request.method} {response.url}: HTTP {code} {response.reason or ''}".rstrip()
    if code >= 500:
        return HttpStatusError(errno.EIO, reason)
    if code == 429:
        return HttpStatusError(errno.EAGAIN, reason)
    return HttpStatusError(errno.EACCES if code in (401, 403) else errno.EINVAL, reason)


def get_json(session: requests.Session, url: str, timeout: tuple[float, float]) -> tuple[int, Any]:
    """``(status, parsed body)`` of a GET; the body is ``None`` unless the status is 2xx. ``OSError`` on transport
    failures and on a 2xx body that is not JSON."""
    try:
        response = session.get(url, timeout=timeout)
        if not 200 <= response.status_code < 300:
            response.close()
            return response.status_code, None
        try:
            return response.status_code, response.json()
        except ValueError as exc:
            raise OSError(errno.EIO, f"{url}: the body is not JSON ({exc})") from None
    except HTTP_ERRORS as exc:
        raise as_oserror(exc, url) from None
