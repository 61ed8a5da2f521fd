"""One DCU as the ``eiger`` source sees it (in the source's thread, with its own session): the SIMPLON version,
the listing (probed per eiger.md §3.3), a file's response headers, and status values."""
from __future__ import annotations

import errno
import logging
import re
from dataclasses import dataclass
from typing import Any

from hidra_eiger.filewriter.simplon import LISTING_PATHS, ListingError, data_url, parse_listing, parse_value
from hidra_eiger.filewriter.web import HTTP_ERRORS, as_oserror, get_json, new_session, status_error

__all__ = ["Dcu", "Head"]

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?$")


@dataclass(frozen=True)
class Head:
    """What a ``HEAD`` of a listed file said: equal heads one poll apart mean the file did not change."""

    size: int | None
    etag: str
    last_modified: str


class Dcu:
    def __init__(self, url: str, api_version: str | None, timeout: tuple[float, float]) -> None:
        self.url = url
        self.root = f"{url}/data"
        self.override = api_version
        self.version = api_version
        self.timeout = timeout
        self.listing_path: str | None = None  # the first listing path that worked (eiger.md §3.3)
        self.session = new_session()

    def close(self) -> None:
        self.session.close()

    def forget(self) -> None:
        """After an error: discover the version (unless configured) and probe the listing again."""
        self.version = self.override
        self.listing_path = None

    def discover(self) -> str:
        """The SIMPLON version: ``GET /detector/api/version/`` (a configured ``api_version`` only overrides)."""
        if self.version is None:
            url = f"{self.url}/detector/api/version/"
            status, body = get_json(self.session, url, self.timeout)
            value = parse_value(body)
            if status != 200 or not isinstance(value, str) or not _VERSION.match(value):
                raise OSError(errno.EIO, f"{url}: no SIMPLON version (HTTP {status}, {str(body)[:80]!r})")
            self.version = value
            log.info("eiger: %s speaks SIMPLON %s", self.url, value)
        return self.version

    def listing(self) -> list[Any]:
        """The raw listing entries; ``OSError`` (transport, HTTP) or ``ListingError`` (shape) on failure."""
        version = self.discover()
        paths = [self.listing_path] if self.listing_path else list(LISTING_PATHS)
        problems = []
        for path in paths:
            url = f"{self.url}/filewriter/api/{version}/{path}"
            status, body = get_json(self.session, url, self.timeout)
            if status != 200:
                problems.append(f"{path}: HTTP {status}")
                continue
            entries = parse_listing(body)
            if self.listing_path is None:
                log.info("eiger: listing %s", url)
                self.listing_path = path
            return entries
        raise ListingError(f"no listing at {self.url}/filewriter/api/{version}/ ({'; '.join(problems)})")

    def head(self, name: str) -> Head | None:
        """The file's headers, or ``None`` when it is not there (404)."""
        url = data_url(self.root, name)
        try:
            response = self.session.head(url, timeout=self.timeout)
        except HTTP_ERRORS as exc:
            raise as_oserror(exc, url) from None
        response.close()
        if response.status_code == 404:
            return None
        if not 200 <= response.status_code < 300:
            raise status_error(response)
        length = response.headers.get("Content-Length")
        return Head(int(length) if length is not None else None, response.headers.get("ETag", ""),
                    response.headers.get("Last-Modified", ""))

    def status(self, module: str, param: str) -> Any:
        """A status value, or ``None`` when the DCU does not have it (404 and other non-2xx answers)."""
        url = f"{self.url}/{module}/api/{self.discover()}/status/{param}"
        status, body = get_json(self.session, url, self.timeout)
        return parse_value(body) if status == 200 else None
