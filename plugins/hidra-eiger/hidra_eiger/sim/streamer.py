"""The stream worker: one thread owns the PUSH socket and sends headers, paced images and ends in order."""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import zmq

from hidra_eiger.sim import stream_v1, stream_v2
from hidra_eiger.sim.series import Series

log = logging.getLogger(__name__)

__all__ = ["Streamer"]

_POLL_MS = 100


@dataclass
class _Job:
    kind: str  # "header", "images", "end", "barrier"
    series: Series | None
    first: int = 0
    count: int = 0
    done: Future[int] = field(default_factory=Future)  # images sent
    sent: int = 0


class _Aborted(Exception):
    pass


class Streamer:
    """Binds a PUSH socket on ``host:port`` (0 = a free port) in its own thread; ``endpoint`` says where."""

    def __init__(self, context: zmq.Context, host: str = "127.0.0.1", port: int = 0, hwm: int = 1000) -> None:
        self._context = context
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._abort = threading.Event()
        self._bound: Future[str] = Future()
        self._thread = threading.Thread(target=self._run, args=(host, port, hwm), name="eiger-stream", daemon=True)
        self._thread.start()
        self.endpoint = self._bound.result(timeout=10)

    def submit(self, kind: str, series: Series | None, first: int = 0, count: int = 0) -> Future[int]:
        """Queue a header, images ``first .. first+count-1`` or an end; the future gives the images sent."""
        job = _Job(kind, series, first, count)
        self._jobs.put(job)
        return job.done

    def abort(self) -> None:
        """Drop every queued job and stop the running one after its current message."""
        self._abort.set()
        self.submit("barrier", None).result(timeout=30)
        self._abort.clear()

    def close(self) -> None:
        self._abort.set()
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _run(self, host: str, port: int, hwm: int) -> None:
        sock = self._context.socket(zmq.PUSH)
        sock.linger = 0
        sock.sndhwm = hwm
        try:
            if port == 0:
                port = sock.bind_to_random_port(f"tcp://{host}")
            else:
                sock.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as exc:
            sock.close()
            self._bound.set_exception(OSError(f"stream port {host}:{port}: {exc}"))
            return
        self._bound.set_result(f"tcp://{host}:{port}")
        try:
            while (job := self._jobs.get()) is not None:
                self._do(sock, job)
        finally:
            sock.close()

    def _do(self, sock: zmq.Socket, job: _Job) -> None:
        if job.series is None or self._abort.is_set():
            job.done.set_result(0)
            return
        try:
            if job.kind == "images":
                self._images(sock, job, job.series)
            elif job.kind == "header":
                job.series.warm()  # NOTE: at arm, like the DCU's own preparation; images then keep their pace
                self._send(sock, _message(job.kind, job.series))
            else:
                self._send(sock, _message(job.kind, job.series))
        except _Aborted:
            log.info("series %d: %s aborted after %d of %d images", job.series.series_id, job.kind, job.sent,
                     job.count)
        except Exception as exc:  # NOTE: a failing job must not kill the worker; the REST caller sees it
            log.exception("stream job %s failed", job.kind)
            job.done.set_exception(exc)
            return
        job.done.set_result(job.sent)

    def _images(self, sock: zmq.Socket, job: _Job, series: Series) -> None:
        frame_time = float(series.detector["frame_time"])
        t0 = time.monotonic()
        for n, index in enumerate(range(job.first, job.first + job.count)):
            delay = t0 + n * frame_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # NOTE: pacing at frame_time, not synchronisation: the detector's own clock
            self._send(sock, _message("image", series, index))
            job.sent += 1

    def _send(self, sock: zmq.Socket, parts: list[bytes]) -> None:
        # NOTE: a PUSH socket without a PULL peer blocks; poll so that abort and close still get through
        while not sock.poll(_POLL_MS, zmq.POLLOUT):
            if self._abort.is_set():
                raise _Aborted
        if self._abort.is_set():
            raise _Aborted
        sock.send_multipart(parts, copy=False)


def _message(kind: str, series: Series, index: int = 0) -> list[bytes]:
    if series.stream_format == "cbor":
        return [{"header": stream_v2.start_message, "end": stream_v2.end_message}[kind](series)
                if kind != "image" else stream_v2.image_message(series, index)]
    if kind == "image":
        return stream_v1.image_parts(series, index)
    return {"header": stream_v1.header_parts, "end": stream_v1.end_parts}[kind](series)
