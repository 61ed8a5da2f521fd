"""The writer loop of databuffer.md §6: PULL a request, wait out the retrieval delay, query, write HDF5 atomically.

Fixes kept from §13: temp file ``<output_file>.tmp-<pid>`` renamed into place, removed on failure (F6); directories
only when the path has one (F8); ``retries`` with a backoff, ``.err`` only after the last attempt (F9); receive
queue of 1 so requests are not hoarded behind a long write (F10).
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import zmq
from bsread.handlers.compact import Handler

from hidra_databuffer.api import Counters
from hidra_databuffer.dbwriter.errfile import write_err
from hidra_databuffer.dbwriter.layout import RangeWriter, write_layout
from hidra_databuffer.dbwriter.query import DEFAULT_DATA_API_URL, SplitLimits, query_parts
from hidra_databuffer.dbwriter.request import RequestError, WriteRequest, decode_message
from hidra_databuffer.dbwriter.results import ResultPublisher, WriteResult

log = logging.getLogger(__name__)

__all__ = ["COUNTERS", "DEV_NULL", "WriterOptions", "WriterService", "execute", "handle", "write_file"]

DEV_NULL = "/dev/null"
#: what a writer counts for hidra's ``GET /statistics`` and ``/metrics``
COUNTERS = ("requests", "files_written", "files_failed", "requests_skipped", "requests_dropped", "channels_written",
            "points_written", "bytes_written")


@dataclass(frozen=True)
class WriterOptions:
    data_api_url: str = DEFAULT_DATA_API_URL
    data_retrieval_delay: float = 0.0
    retries: int = 0
    retry_backoff: float = 1.0
    query_timeout_s: float | None = None
    split: SplitLimits = SplitLimits()


def write_file(request: WriteRequest, options: WriterOptions) -> tuple[int, int]:
    """Query the range (in sub-ranges when long) and write the file to a temp name, then rename; returns
    (channels, points)."""
    output = request.output_file
    parts = query_parts(options.data_api_url, request.data_api_request, options.query_timeout_s, options.split)
    first, last = next(parts)
    directory = os.path.dirname(output)
    if directory:
        os.makedirs(directory, exist_ok=True)
    temp = f"{output}.tmp-{os.getpid()}"
    try:
        with h5py.File(temp, "w") as h5:
            counts = write_layout(h5, first, request.params) if last else _write_parts(h5, first, parts, request)
        os.replace(temp, output)
    except BaseException:
        _remove(temp)
        raise
    return counts


def _write_parts(h5: h5py.File, first: list[dict[str, Any]], rest: Iterator[tuple[list[dict[str, Any]], bool]],
                 request: WriteRequest) -> tuple[int, int]:
    """A range answered in parts: each part goes into the file while the next is fetched (socket reads and HDF5
    writes both release the GIL)."""
    writer = RangeWriter(h5, request.params)
    with _Prefetch(rest) as parts:
        writer.add(first)
        del first
        for part in parts:
            writer.add(part)
    return writer.finish()


class _Prefetch:
    """The parts of ``query_parts`` fetched by a thread of its own: the next part while the consumer writes this
    one, and no further (at most two parts in memory)."""

    _DONE = object()

    def __init__(self, parts: Iterator[tuple[list[dict[str, Any]], bool]]) -> None:
        self._parts = parts
        self._queue: queue.Queue[Any] = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dbwriter-prefetch", daemon=True)

    def __enter__(self) -> Iterator[list[dict[str, Any]]]:
        self._thread.start()
        return self._take()

    def __exit__(self, *exc: object) -> None:
        self._cancel.set()
        while self._thread.is_alive():  # NOTE: take what the consumer never will, so the thread sees the cancel
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)
                self._queue.task_done()
        self._thread.join()

    def _take(self) -> Iterator[list[dict[str, Any]]]:
        while True:
            item = self._queue.get()
            self._queue.task_done()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _run(self) -> None:
        try:
            for part, _ in self._parts:
                if not self._hand(part):
                    return
        except BaseException as exc:  # NOTE: handed to the consumer, which raises it in its own thread
            self._hand(exc)
            return
        finally:
            self._parts.close()  # type: ignore[attr-defined]
        self._hand(self._DONE)

    def _hand(self, item: object) -> bool:
        """Hand ``item`` over and wait until it is taken; whether to go on."""
        self._queue.put(item)
        self._queue.join()
        return not self._cancel.is_set()


def execute(request: WriteRequest, options: WriterOptions, stop: threading.Event | None = None) -> tuple[int, int]:
    """``write_file`` with ``options.retries`` further attempts; raises the last error."""
    attempt = 0
    while True:
        try:
            return write_file(request, options)
        except Exception as exc:
            if attempt >= options.retries:
                raise
            attempt += 1
            log.warning("%s: attempt %d failed (%s); retrying in %.1f s", request.output_file, attempt, exc,
                        options.retry_backoff)
            if stop is None:
                time.sleep(options.retry_backoff)
            elif stop.wait(options.retry_backoff):
                raise


def handle(request: WriteRequest, options: WriterOptions, stop: threading.Event) -> WriteResult:
    """One request as §6 says: skip ``/dev/null``, wait out the delay, write, ``.err`` on failure."""
    taken = time.monotonic()
    if request.output_file == DEV_NULL:
        log.info("output_file is %s: request skipped", DEV_NULL)
        return WriteResult(DEV_NULL, True, 0, 0, None, 0.0)
    log.info("request: %s", request.describe())
    # NOTE: the delay counts from the request's creation, so time spent queued is not waited twice.
    wait_s = max(0.0, options.data_retrieval_delay - (time.time() - request.timestamp))
    if wait_s and stop.wait(wait_s):
        log.warning("%s: stopped while waiting for the retrieval delay", request.output_file)
        return WriteResult(request.output_file, False, 0, 0, "writer stopped during the retrieval delay",
                           time.monotonic() - taken)
    try:
        channels, points = execute(request, options, stop)
    except Exception as exc:
        log.error("%s: write failed: %s", request.output_file, exc)
        elapsed = time.monotonic() - taken
        try:
            log.error("%s: request kept in %s for replay", request.output_file, write_err(request))
        except OSError as err:
            log.error("%s: cannot write the .err file either: %s; request: %s", request.output_file, err,
                      request.record())
        return WriteResult(request.output_file, False, 0, 0, str(exc) or repr(exc), elapsed)
    elapsed = time.monotonic() - taken
    log.info("wrote %s: %d channels, %d points in %.2f s", request.output_file, channels, points, elapsed)
    return WriteResult(request.output_file, True, channels, points, None, elapsed)


class WriterService:
    """One PULL socket connected to the broker; requests are handled one at a time in the calling thread.

    With ``status_endpoint`` each finished request's result goes out on a PUB socket created (and used) here too.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], address: str, options: WriterOptions,
                 queue_size: int = 1, status_endpoint: str | None = None) -> None:
        self.options = options
        self.address = address
        self._socket = context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, queue_size)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.connect(address)
            self.results = ResultPublisher(context, status_endpoint) if status_endpoint else None
        except zmq.ZMQError:
            self._socket.close()
            raise
        self._handler = Handler()
        self.counters = Counters(COUNTERS)
        self.busy = False

    def serve(self, stop: threading.Event, poll_ms: int = 200, drain: threading.Event | None = None) -> None:
        """Until ``stop`` (which also cuts short a retrieval delay or a retry's wait) or ``drain`` (which lets
        the request in hand finish) is set."""
        try:
            while not stop.is_set() and not (drain is not None and drain.is_set()):
                if not self._socket.poll(poll_ms):
                    continue
                frames = self._socket.recv_multipart()
                self.counters.add("requests")
                try:
                    request = decode_message(self._handler, frames)
                except RequestError as exc:
                    # NOTE: no output file is known, so there is no .err (§7): only the log has it.
                    log.error("undecodable writing request dropped: %s", exc)
                    self.counters.add("requests_dropped")
                    continue
                self.busy = True
                result = handle(request, self.options, stop)
                self.busy = False
                self._count(result)
                if self.results is not None:
                    self.results.publish(result)
        finally:
            self.close()

    def close(self) -> None:
        self._socket.close()
        if self.results is not None:
            self.results.close()


    def _count(self, result: WriteResult) -> None:
        if result.output_file == DEV_NULL:
            self.counters.add("requests_skipped")
        elif not result.ok:
            self.counters.add("files_failed")
        else:
            self.counters.add("files_written")
            self.counters.add("channels_written", result.n_channels)
            self.counters.add("points_written", result.n_points)
            self.counters.add("bytes_written", _size(result.output_file))
        self.counters.last = {"output_file": result.output_file, "ok": result.ok, "error": result.error,
                              "elapsed_s": round(result.elapsed, 6), "time": time.time()}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # NOTE: moved away already by whoever reads the files; the counter is best effort
        return 0


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove temp file %s: %s", path, exc)
