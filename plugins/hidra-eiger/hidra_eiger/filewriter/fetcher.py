"""The ``http`` fetcher: files from any HTTP server that answers ``HEAD``, ``GET`` and ``DELETE`` on a file's URL
(an EIGER DCU's ``/data/<path>``), streamed in chunks with a connect and a per-read timeout.

A file's URL is the event's ``source_path`` (``http://dcu/data``) joined with its quoted ``file_id``, so that
events resumed from the ledger (which keeps no ``extra``) are fetched and removed alike.

Identity (eiger.md §3.4, name reuse): ``etag:<ETag>`` when the server sends one; else ``lm:<Last-Modified>:<size>``
(one-second resolution: a name rewritten with the same size within the same second would look unchanged); a server
that sends neither gets ``sha256:<digest of the body>``, which costs a download per ``stat`` and per ``remove``
but never mistakes new content of a reused name for a copy already stored (or removed).

The size comes from ``Content-Length``; without one (chunked encoding) the body is spooled to a temporary file in
``spool_dir`` first (eiger.md §3.5), which ``chunks`` then reads and removes. ``chunks`` checks that the ``GET``
announces and delivers exactly ``stat.size`` bytes; anything else (a file still growing, a truncated body, a reset
connection, a 5xx) raises an ``OSError`` the kernel retries (``EIO``/``ETIMEDOUT``), never a short copy.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from email.utils import parsedate_to_datetime
from typing import Any, Iterator

import requests
from pydantic import BaseModel, ConfigDict, Field

from hidra_core import Fetcher, FileEvent, FileStat, SourceChanged

from hidra_eiger.filewriter.progress import progress
from hidra_eiger.filewriter.simplon import data_url
from hidra_eiger.filewriter.web import HTTP_ERRORS, as_oserror, new_session, status_error

__all__ = ["HttpFetcher", "HttpFetcherConfig"]

log = logging.getLogger(__name__)

_MEMO = 4096  # sizes and first-seen times kept per (url, identity), for servers without Content-Length/Last-Modified
_RETRYABLE = frozenset({errno.EIO, errno.ETIMEDOUT, errno.EAGAIN})
_SPOOL = ".hidra-spool-"  # + pid + "-": whose spooled body it is


class HttpFetcherConfig(BaseModel):
    """Options of the ``http`` fetcher (``sender.fetcher: {type: http, http: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_timeout_s: float = Field(3.0, gt=0, description="seconds to wait for a TCP connection to the server")
    read_timeout_s: float = Field(10.0, gt=0, description=(
        "seconds a response may stay silent: per read of a download, not per file"))
    spool_dir: str | None = Field(None, description=(
        "directory for bodies sent without Content-Length (downloaded there first to learn their size, removed "
        "after sending); default: the system's temporary directory"))
    spool_max_bytes: int = Field(64 << 30, gt=0, description=(
        "largest body spooled; a bigger one without Content-Length fails (kept at the source, reported)"))


class HttpFetcher(Fetcher):
    config_class = HttpFetcherConfig
    config: HttpFetcherConfig

    def __init__(self, config: HttpFetcherConfig) -> None:
        super().__init__(config)
        self._local = threading.local()  # NOTE: one session per thread (the kernel's fetch worker, or a test's)
        self._sizes: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()  # -> (size, first seen ns)
        self._spooled: tuple[str, str, str] | None = None  # (url, identity, temp file) of the last stat
        self._prefix = f"{_SPOOL}{os.getpid()}-"
        _remove_stale_spools(config.spool_dir or tempfile.gettempdir())
        self.stats = {"downloads": 0, "bytes": 0, "errors": 0, "retryable": 0, "spooled": 0, "removed": 0,
                      "already_gone": 0, "changed": 0}

    @property
    def timeout(self) -> tuple[float, float]:
        return self.config.connect_timeout_s, self.config.read_timeout_s

    def _session(self, root: str) -> requests.Session:
        sessions: dict[str, requests.Session] = self._local.__dict__.setdefault("sessions", {})
        if root not in sessions:
            sessions[root] = new_session()
        return sessions[root]

    def _request(self, method: str, event: FileEvent, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self._session(event.source_path).request(method, url, timeout=self.timeout, **kwargs)
        except HTTP_ERRORS as exc:
            raise self._failed(as_oserror(exc, url)) from None

    def _failed(self, exc: OSError) -> OSError:
        """Count and log a failure before it is raised; the kernel retries the retryable ones."""
        self.stats["errors"] += 1
        again = exc.errno in _RETRYABLE
        self.stats["retryable"] += again
        log.log(logging.WARNING if again else logging.ERROR, "http fetcher: %s (%s; %d failures so far)",
                exc.strerror or exc, "retryable" if again else "not retryable", self.stats["errors"])
        return exc

    # -- stat --------------------------------------------------------------------------------------------

    def stat(self, event: FileEvent) -> FileStat | None:
        stat = self._stat(event)
        if stat is not None:
            progress.seen(event.source_path, event.file_id, stat.identity)
        return stat

    def _stat(self, event: FileEvent) -> FileStat | None:
        self._drop_spool()
        url = data_url(event.source_path, event.file_id)
        headers = self._head(event, url)
        if headers is None:
            return None
        identity = _validator(headers)
        length = headers.get("Content-Length")
        memo = self._sizes.get((url, identity)) if identity else None
        if identity is None or (length is None and memo is None):
            return self._spool(event, url, identity)
        size = int(length) if length is not None else memo[0] if memo is not None else 0
        if identity.startswith("lm:"):
            identity = f"{identity}:{size}"
        return FileStat(size, *(2 * (self._mtime_ns(url, identity, size, headers),)), identity=identity)

    def _head(self, event: FileEvent, url: str) -> Any:
        """The response headers of a ``HEAD``, or ``None`` on 404."""
        response = self._request("HEAD", event, url)
        response.close()
        if response.status_code == 404:
            return None
        if not 200 <= response.status_code < 300:
            raise self._failed(status_error(response))
        return response.headers

    def _mtime_ns(self, url: str, identity: str, size: int, headers: Any) -> int:
        """``Last-Modified`` in ns; without one, when this version was first seen (stable across stats)."""
        key = (url, identity)
        known = self._sizes.pop(key, None)
        mtime = _last_modified_ns(headers) or (known[1] if known else time.time_ns())
        self._sizes[key] = (size, mtime)
        while len(self._sizes) > _MEMO:
            self._sizes.popitem(last=False)
        return mtime

    def _spool(self, event: FileEvent, url: str, identity: str | None) -> FileStat | None:
        """Download the body to a temporary file to learn its size (and its digest when it is the identity)."""
        digest = hashlib.sha256()
        handle = tempfile.NamedTemporaryFile(dir=self.config.spool_dir, prefix=self._prefix, delete=False)
        try:
            with handle, self._get(event, url) as response:
                if response is None:
                    os.unlink(handle.name)
                    return None
                size = 0
                for piece in self._pieces(response, url, 1 << 20):
                    size += len(piece)
                    if size > self.config.spool_max_bytes:
                        raise OSError(errno.EFBIG, f"{url}: more than spool_max_bytes"
                                                   f" ({self.config.spool_max_bytes}) without Content-Length")
                    digest.update(piece)
                    handle.write(piece)
                length = response.headers.get("Content-Length")
                if length is not None and int(length) != size:
                    raise self._failed(OSError(errno.EIO, f"{url}: got {size} of {length} bytes"))
        except BaseException:
            os.unlink(handle.name)
            raise
        self.stats["spooled"] += 1
        headers = response.headers
        identity = f"sha256:{digest.hexdigest()}" if identity is None else identity
        if identity.startswith("lm:"):
            identity = f"{identity}:{size}"
        self._spooled = (url, identity, handle.name)
        return FileStat(size, *(2 * (self._mtime_ns(url, identity, size, headers),)), identity=identity)

    def _drop_spool(self) -> None:
        if self._spooled is not None:
            _unlink(self._spooled[2])
            self._spooled = None

    # -- chunks ------------------------------------------------------------------------------------------

    def chunks(self, event: FileEvent, stat: FileStat, chunksize: int) -> Iterator[Any]:
        url = data_url(event.source_path, event.file_id)
        spooled, self._spooled = self._spooled, None
        if spooled is not None and spooled[:2] == (url, stat.identity):
            self._check_unchanged(event, url, stat, spooled[2])
            return self._from_spool(event, spooled[2], stat, chunksize)
        if spooled is not None:
            _unlink(spooled[2])
        return self._download(event, url, stat, chunksize)

    def _download(self, event: FileEvent, url: str, stat: FileStat, chunksize: int) -> Iterator[Any]:
        with self._get(event, url) as response:
            if response is None:
                raise self._failed(OSError(errno.ENOENT, f"{url}: gone since it was looked at"))
            length = response.headers.get("Content-Length")
            if length is not None and int(length) != stat.size:
                raise self._failed(OSError(errno.EIO, f"{url}: {length} bytes now, {stat.size} when looked at"
                                                      " (still being written?)"))
            etag = response.headers.get("ETag")
            if etag and stat.identity.startswith("etag:") and stat.identity != f"etag:{etag}":
                raise self._failed(OSError(errno.EIO, f"{url}: changed since it was looked at (ETag {etag})"))
            received = 0
            for piece in self._pieces(response, url, chunksize):
                received += len(piece)
                if received > stat.size:
                    raise self._failed(OSError(errno.EIO, f"{url}: more than the {stat.size} bytes announced"))
                if received == stat.size:
                    self._done(event, stat)  # NOTE: the kernel takes the last chunk and asks no further
                yield piece
            if received != stat.size:
                raise self._failed(OSError(errno.EIO, f"{url}: got {received} of {stat.size} bytes"))
            if stat.size == 0:
                self._done(event, stat)
                yield b""

    def _check_unchanged(self, event: FileEvent, url: str, stat: FileStat, spool: str) -> None:
        """The spooled body is still the server's version (as far as its headers tell): else ``OSError``."""
        headers = self._head(event, url)
        length = None if headers is None else headers.get("Content-Length")
        validator = None if headers is None else _validator(headers)
        if headers is None or (length is not None and int(length) != stat.size) or (
                validator is not None and not stat.identity.startswith(validator)):
            _unlink(spool)
            raise self._failed(OSError(errno.EIO, f"{url}: changed or gone since it was looked at"))

    def _from_spool(self, event: FileEvent, path: str, stat: FileStat, chunksize: int) -> Iterator[Any]:
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size != stat.size:
                    raise OSError(errno.EIO, f"spooled {path} is not {stat.size} bytes")
                self._done(event, stat)  # NOTE: every byte is here (the kernel stops after the last chunk)
                while True:
                    piece = handle.read(chunksize)
                    if not piece:
                        break
                    yield piece
                if stat.size == 0:
                    yield b""
        finally:
            _unlink(path)

    def _done(self, event: FileEvent, stat: FileStat) -> None:
        self.stats["downloads"] += 1
        self.stats["bytes"] += stat.size
        progress.fetched(event.source_path, event.file_id, stat.identity)

    def _get(self, event: FileEvent, url: str) -> Any:
        """A streamed GET as a context manager yielding the response, or ``None`` on 404."""
        response = self._request("GET", event, url, stream=True)
        if response.status_code == 404:
            response.close()
            return _Closing(None)
        if not 200 <= response.status_code < 300:
            response.close()
            raise self._failed(status_error(response))
        return _Closing(response)

    def _pieces(self, response: requests.Response, url: str, size: int) -> Iterator[bytes]:
        """The body in pieces of exactly ``size`` bytes but the last; each read waits at most the read timeout."""
        raw = response.raw
        try:
            while True:
                piece = raw.read(size)
                while piece and len(piece) < size:
                    more = raw.read(size - len(piece))
                    if not more:
                        break
                    piece += more
                if not piece:
                    return
                yield piece
                if len(piece) < size:
                    return
        except HTTP_ERRORS as exc:
            raise self._failed(as_oserror(exc, url)) from None
        except OSError as exc:
            raise self._failed(as_oserror(exc, url)) from None

    # -- remove ------------------------------------------------------------------------------------------

    def remove(self, event: FileEvent, stat: FileStat) -> None:
        url = data_url(event.source_path, event.file_id)
        now = self.stat(event)
        self._drop_spool()
        if now is not None and now.identity != stat.identity:
            self.stats["changed"] += 1
            raise SourceChanged(f"{url} changed after it was sent ({stat.identity} -> {now.identity}); not deleted")
        if now is not None:
            response = self._request("DELETE", event, url)
            response.close()
            if response.status_code != 404:
                if not 200 <= response.status_code < 300:
                    raise self._failed(status_error(response))
                self.stats["removed"] += 1
                progress.deleted(event.source_path, event.file_id)
                return
        self.stats["already_gone"] += 1
        log.info("http fetcher: %s was already gone (not deleted again)", url)
        progress.deleted(event.source_path, event.file_id)


class _Closing:
    """``with`` for a response that may be ``None``."""

    def __init__(self, response: requests.Response | None) -> None:
        self.response = response

    def __enter__(self) -> requests.Response | None:
        return self.response

    def __exit__(self, *exc: Any) -> None:
        if self.response is not None:
            self.response.close()


def _validator(headers: Any) -> str | None:
    etag = headers.get("ETag")
    if etag:
        return f"etag:{etag}"
    modified = headers.get("Last-Modified")
    return f"lm:{modified}" if modified else None


def _last_modified_ns(headers: Any) -> int:
    value = headers.get("Last-Modified")
    if not value:
        return 0
    try:
        return int(parsedate_to_datetime(value).timestamp()) * 1_000_000_000
    except (TypeError, ValueError):
        return 0


def _remove_stale_spools(directory: str) -> None:
    """Spooled bodies left by a sender that died (its pid gone): removed, so a crash never fills the disk."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith(_SPOOL)]
    except OSError:
        return
    for name in names:
        pid = name[len(_SPOOL):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("http fetcher: removing %s, spooled by process %s that is gone", name, pid)
            _unlink(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
