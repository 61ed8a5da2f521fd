"""The ``http`` fetcher against a small, real HTTP server in the test process (any server with GET/HEAD/DELETE,
eiger.md §3.5): the fetcher contract with every kind of version header, spooling without Content-Length, and
short or failing responses as retryable errors. Faults of a real DCU are in test_filewriter_e2e.py (simulator)."""
from __future__ import annotations

import errno
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

import pytest

from hidra_core import FileEvent, SourceChanged
from hidra_core.testing import FetcherContract


class Served:
    """Files by path and how they are served (headers present, faults)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int]] = {}  # path -> (data, mtime_ns)
        self.etag = self.last_modified = self.content_length = True
        self.truncate = self.fail = 0  # that many next GETs are cut short / answer 500
        self.delete_status = 204
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def put(self, path: str, data: bytes) -> None:
        with self.lock:
            self.files[path] = (data, time.time_ns())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served: Served

    def log_message(self, *args: Any) -> None:
        pass

    def _file(self) -> tuple[bytes, int] | None:
        self.served.requests.append((self.command, self.path))
        found = self.served.files.get(unquote(self.path.removeprefix("/data/")))
        if found is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        return found

    def _headers(self, data: bytes, mtime_ns: int) -> None:
        s = self.served
        self.send_response(200)
        if s.etag:
            self.send_header("ETag", f'"{mtime_ns:x}-{len(data):x}"')
        if s.last_modified:
            self.send_header("Last-Modified", formatdate(mtime_ns / 1e9, usegmt=True))
        if s.content_length:
            self.send_header("Content-Length", str(len(data)))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802
        found = self._file()
        if found is not None:
            self._headers(*found)

    def do_GET(self) -> None:  # noqa: N802
        found = self._file()
        if found is None:
            return
        s = self.served
        if s.fail:
            s.fail -= 1
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = found[0]
        self._headers(*found)
        if s.truncate:
            s.truncate -= 1
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        if s.content_length:
            self.wfile.write(data)
        else:
            for i in range(0, len(data), 7000):
                piece = data[i:i + 7000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

    def do_DELETE(self) -> None:  # noqa: N802
        found = self._file()
        if found is None:
            return
        status = self.served.delete_status
        if status < 300:
            self.served.files.pop(unquote(self.path.removeprefix("/data/")), None)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def served() -> Iterator[tuple[Served, str]]:
    files = Served()
    handler = type("Handler", (_Handler,), {"served": files})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield files, f"http://127.0.0.1:{server.server_address[1]}/data"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def event_of(root: str, name: str) -> FileEvent:
    rel, _, filename = name.rpartition("/")
    return FileEvent(root, rel, filename)


class _Contract(FetcherContract):
    driver_name = "http"
    headers: dict[str, bool] = {}

    @pytest.fixture(autouse=True)
    def _server(self, served: tuple[Served, str]) -> None:
        self.files, self.root = served
        for key, value in self.headers.items():
            setattr(self.files, key, value)

    def make_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"spool_dir": str(tmp_path)}

    def make_event(self, tmp_path: Path, name: str, data: bytes) -> FileEvent:
        self.files.put(name, data)
        return event_of(self.root, name)


class TestHttpFetcherWithETag(_Contract):
    pass


class TestHttpFetcherWithLastModifiedOnly(_Contract):
    headers = {"etag": False}


class TestHttpFetcherWithoutVersionHeaders(_Contract):
    headers = {"etag": False, "last_modified": False}


class TestHttpFetcherWithoutContentLength(_Contract):
    headers = {"content_length": False}


def _fetcher(tmp_path: Path) -> Any:
    from hidra_core import create_driver

    return create_driver("fetcher", "http", {"spool_dir": str(tmp_path), "read_timeout_s": 5}, "<test>",
                         "sender.fetcher.http")


def test_body_without_content_length_is_spooled_then_removed(tmp_path: Path, served: tuple[Served, str]) -> None:
    files, root = served
    files.content_length = False
    data = bytes(range(256)) * 1000
    files.put("run/a.h5", data)
    fetcher = _fetcher(tmp_path)
    event = event_of(root, "run/a.h5")
    stat = fetcher.stat(event)
    assert stat.size == len(data) and list(tmp_path.glob(".hidra-spool-*"))
    assert b"".join(fetcher.chunks(event, stat, 4096)) == data
    assert not list(tmp_path.glob(".hidra-spool-*")), "the spooled body was left behind"
    assert fetcher.stats["spooled"] == 1


@pytest.mark.parametrize("fault", ["truncate", "fail"])
def test_short_or_failed_download_raises_a_retryable_error_never_a_short_copy(
        tmp_path: Path, served: tuple[Served, str], fault: str) -> None:
    files, root = served
    files.put("b.h5", b"x" * 100_000)
    fetcher = _fetcher(tmp_path)
    event = event_of(root, "b.h5")
    stat = fetcher.stat(event)
    setattr(files, fault, 1)
    with pytest.raises(OSError) as info:
        list(fetcher.chunks(event, stat, 8192))
    assert info.value.errno in (errno.EIO, errno.ETIMEDOUT)
    assert fetcher.stats["retryable"] == 1
    assert b"".join(fetcher.chunks(event, stat, 8192)) == b"x" * 100_000  # the next attempt succeeds


def test_a_reused_name_with_new_content_of_the_same_size_gets_a_new_identity(
        tmp_path: Path, served: tuple[Served, str]) -> None:
    files, root = served
    files.etag = files.last_modified = False  # NOTE: the hardest case: only the content tells versions apart
    fetcher = _fetcher(tmp_path)
    event = event_of(root, "series_1_data_000001.h5")
    files.put(event.file_id, b"a" * 5000)
    first = fetcher.stat(event)
    files.put(event.file_id, b"b" * 5000)
    second = fetcher.stat(event)
    assert first.identity != second.identity
    with pytest.raises(SourceChanged):
        fetcher.remove(event, first)
    assert event.file_id in files.files, "new content that was never stored was deleted"


def test_delete_that_fails_is_raised_and_the_file_kept(tmp_path: Path, served: tuple[Served, str]) -> None:
    files, root = served
    files.put("c.h5", b"c" * 10)
    fetcher = _fetcher(tmp_path)
    event = event_of(root, "c.h5")
    stat = fetcher.stat(event)
    files.delete_status = 500
    with pytest.raises(OSError) as info:
        fetcher.remove(event, stat)
    assert info.value.errno == errno.EIO and "c.h5" in files.files
    files.delete_status = 204
    fetcher.remove(event, stat)
    assert "c.h5" not in files.files and fetcher.stats["removed"] == 1


@pytest.mark.parametrize("content_length", [True, False])
def test_a_download_the_kernel_stops_after_its_last_chunk_counts_as_a_complete_copy(
        tmp_path: Path, served: tuple[Served, str], content_length: bool) -> None:
    from hidra_eiger.filewriter.progress import progress

    files, root = served
    files.content_length = content_length
    files.put("done.h5", b"d" * 10_000)
    fetcher = _fetcher(tmp_path)
    event = event_of(root, "done.h5")
    progress.watch(root)
    try:
        stat = fetcher.stat(event)
        chunks = iter(fetcher.chunks(event, stat, 4096))
        for _ in range(3):  # NOTE: as the kernel's fetch worker: exactly ceil(size / chunksize), then close()
            next(chunks)
        chunks.close()  # type: ignore[attr-defined]
        assert progress.forget(root, "done.h5") == (True, False)
        stat = fetcher.stat(event)
        list(fetcher.chunks(event, stat, 4096))
        files.put("done.h5", b"e" * 10_000)  # NOTE: rewritten after the download: that copy is stale
        fetcher.stat(event)
        assert progress.forget(root, "done.h5") == (False, False)
    finally:
        progress.unwatch(root)


def test_bodies_spooled_by_a_sender_that_died_are_removed_at_start(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".hidra-spool-{int(gone.stdout)}-abc"
    mine = tmp_path / f".hidra-spool-{os.getpid()}-def"
    other = tmp_path / "unrelated.h5"
    for path in (stale, mine, other):
        path.write_bytes(b"x")
    _fetcher(tmp_path)
    assert not stale.exists() and mine.exists() and other.exists()
