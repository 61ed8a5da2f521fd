"""The sender's fetch worker: every fetcher call (stat, busy, read, remove) runs in one thread of its own, so a
slow disk or share never holds up the router loop (confirmations, the com port's answer window, SIGTERM).

The router (``Fetching``) and the worker (``FetchWorker``) hand each other Python objects through two deques
(thread-safe for append and popleft, and nothing is pickled or copied: chunks are the fetcher's own buffers); an
inproc PAIR only rings a doorbell so the other side's poll wakes up. The worker answers in order; its chunks stay
within a byte budget that the router refills as it hands them on, so memory stays bounded. Retryable
``OSError`` s are retried with back-off; any other exception is reported with its file.
"""
from __future__ import annotations

import errno
import inspect
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Iterator

import zmq

from hidra_core.errors import HidraError
from hidra_core.inline import InlineFetcher
from hidra_core.interfaces import EmptyConfig, FileStat, SourceChanged
from hidra_core.sender.outgoing import Checksums, Outgoing
from hidra_core.types import FileEvent

__all__ = ["FetchFailed", "FetchWorker", "Fetching", "Job", "remove_checked"]

log = logging.getLogger(__name__)

_RETRYABLE = frozenset({errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR, errno.ESTALE, errno.EBUSY})
_ATTEMPTS = 3
_BACKOFF_S = 0.1
#: files asked of the worker ahead of the one being sent (their stat and first chunks overlap its sending)
JOBS_AHEAD = 32
_RING_AFTER = 16  # replies that wake the router even while the worker still has work


class FetchFailed(HidraError):
    """A fetcher call failed in the worker: ``str()`` names the exception type and message."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _RETRYABLE


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, FetchFailed) else f"{type(exc).__name__}: {exc}"


def _takes_stat(fetcher: Any) -> bool:
    try:
        params = list(inspect.signature(fetcher.remove).parameters.values())
    except (TypeError, ValueError):
        return True
    return len(params) >= 2 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def remove_checked(fetcher: Any, event: FileEvent, stat: FileStat) -> None:
    """``fetcher.remove(event, stat)``; a fetcher written for the older ``remove(event)`` gets the version
    checked by the kernel first (it cannot tell whether a writer still has the data open)."""
    if _takes_stat(fetcher):
        fetcher.remove(event, stat)
        return
    now = fetcher.stat(event)
    if now is None:
        return
    if now.identity != stat.identity:
        raise SourceChanged(f"{event.file_id} changed after it was sent; not removed")
    fetcher.remove(event)


class FetchWorker:
    """The worker thread: opens, reads and removes files in the order asked, within the byte budget."""

    def __init__(self, fetcher: Any, context: zmq.Context, endpoint: str, chunksize: int) -> None:
        self.fetcher = fetcher
        self.inline = InlineFetcher(EmptyConfig())  # NOTE: every event that carries its data, whatever the config
        self.context = context
        self.endpoint = endpoint
        self.chunksize = chunksize
        # NOTE: one chunk read ahead of the data socket, which itself queues up to its HWM: more read-ahead only
        # outgrew the fetcher's buffer pool (fresh buffers, page faults) and the page cache the receiver needs.
        self.budget = chunksize
        self._jobs: deque[tuple[int, FileEvent, str | None]] = deque()
        self._removals: deque[tuple[FileEvent, FileStat]] = deque()
        self._reading: tuple[int, FileEvent, Iterator[Any]] | None = None
        self._sums = Checksums(0)  # of the file being read
        self._left = 0  # chunks of the file being read still to come
        self._outstanding = 0
        self.requests: deque[tuple[Any, ...]] = deque()  # from the router
        self.replies: deque[tuple[Any, ...]] = deque()  # to the router
        self.rung = False  # a doorbell the router has not answered yet
        self.asked = False  # the router's doorbell, likewise
        self.starved = False  # idle for want of budget: only then do credits need to wake the worker
        self.retries = 0  # fetcher calls tried again here (read by the router's snapshot)
        self._sock: zmq.Socket | None = None
        self.thread = threading.Thread(target=self._main, name="hidra-fetch", daemon=True)

    def _main(self) -> None:
        sock = self.context.socket(zmq.PAIR)
        sock.linger = 0
        sock.connect(self.endpoint)
        try:
            self._serve(sock)
        except Exception:  # NOTE: a bug here; the router sees the thread die and stops with an error
            log.exception("the fetch worker failed")
        finally:
            self._close_reading()
            sock.close()

    def _has_work(self) -> bool:
        if self._removals or (self._reading is None and self._jobs):
            return True
        return self._reading is not None and self._outstanding < self.budget

    def _serve(self, sock: zmq.Socket) -> None:
        self._sock = sock
        while True:
            self.asked = False  # NOTE: before the requests are taken: one appended after this rings again
            while self.requests:
                if not self._request(self.requests.popleft()):
                    return
            if not self._has_work():
                self._ring()
                self.starved = self._reading is not None
                # NOTE: the router appends a request before it looks at ``starved``; a credit it appended
                # without ringing is seen here.
                if not self.requests and sock.poll(1000):
                    while sock.poll(0):
                        sock.recv()
                self.starved = False
                continue
            if self._removals:
                self._remove(*self._removals.popleft())
            elif self._reading is None and self._jobs:
                self._open_next()
            elif self._reading is not None and self._outstanding < self.budget:
                self._read_next()

    def _send(self, reply: tuple[Any, ...]) -> None:
        self.replies.append(reply)
        if len(self.replies) >= _RING_AFTER:
            self._ring()

    def _ring(self) -> None:
        """Wake the router for the replies so far. NOTE: rung when the worker runs out of work (or budget), so
        that the router takes a batch of small files per wake-up rather than one."""
        if self.replies and not self.rung and self._sock is not None:
            self.rung = True
            _ring(self._sock)

    def _request(self, msg: tuple[Any, ...]) -> bool:
        kind = msg[0]
        if kind == "credit":
            self._outstanding -= msg[1]
        elif kind == "open":
            self._jobs.extend(msg[1])
        elif kind == "remove":
            self._removals.append(msg[1:])
        elif kind == "cancel":
            if self._reading is not None and self._reading[0] == msg[1]:
                self._close_reading()
            else:
                self._jobs = deque(job for job in self._jobs if job[0] != msg[1])
        return kind != "stop"

    def _retry(self, call: Any, *args: Any) -> Any:
        for attempt in range(_ATTEMPTS):
            try:
                return call(*args)
            except OSError as exc:
                if not retryable(exc) or attempt == _ATTEMPTS - 1:
                    raise
                log.warning("%s failed (%s), attempt %d of %d; retrying", getattr(call, "__name__", call), exc,
                            attempt + 1, _ATTEMPTS)
                self.retries += 1
                time.sleep(_BACKOFF_S * 2**attempt)  # NOTE: in the worker; the router loop goes on
        raise AssertionError("unreachable")

    def _open_next(self) -> None:
        job, event, skip = self._jobs.popleft()
        fetcher = self.inline if event.payload is not None else self.fetcher
        try:
            stat = self._retry(fetcher.stat, event)
            if stat is None:
                return self._send(("vanished", job))
            if self._retry(fetcher.busy, event, stat):
                return self._send(("busy", job))
            if stat.identity == skip:
                return self._send(("unchanged", job, stat))
            chunks = iter(fetcher.chunks(event, stat, self.chunksize))
        except Exception as exc:
            return self._report(job, event, exc)
        self._send(("stat", job, stat))
        self._reading = (job, event, chunks)
        self._left = max(1, math.ceil(stat.size / self.chunksize))
        self._sums = Checksums(self._left)

    def _read_next(self) -> None:
        assert self._reading is not None
        job, event, chunks = self._reading
        try:
            payload = next(chunks)
        except StopIteration:
            self._reading = None
            return self._send(("end", job))
        except Exception as exc:
            self._close_reading()
            return self._report(job, event, exc)
        self._outstanding += memoryview(payload).nbytes
        self._send(("chunk", job, self._sums.add(payload)))
        self._left -= 1
        if self._left == 0:  # NOTE: all the file's chunks: the router needs no "end" (one message less a file)
            self._close_reading()

    def _report(self, job: int, event: FileEvent, exc: BaseException) -> None:
        if not isinstance(exc, OSError):  # NOTE: a driver bug: its traceback is worth a line of its own
            log.error("the fetcher raised on %s", event.file_id, exc_info=exc)
        self._send(("error", job, describe(exc), retryable(exc)))

    def _remove(self, event: FileEvent, stat: FileStat) -> None:
        try:
            self._retry(remove_checked, self.fetcher, event, stat)
        except SourceChanged as exc:
            return self._send(("kept", event, str(exc)))
        except Exception as exc:
            if not isinstance(exc, OSError):
                log.error("the fetcher raised removing %s", event.file_id, exc_info=exc)
            return self._send(("remove_failed", event, describe(exc)))
        self._send(("removed", event, stat))

    def _close_reading(self) -> None:
        if self._reading is not None:
            close = getattr(self._reading[2], "close", None)
            self._reading = None
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing the fetcher's chunks failed")


@dataclass
class Job:
    """A file asked of the worker: its event, whether to send even if unchanged, and (once stat'ed) its send."""

    event: FileEvent
    force: bool
    out: Outgoing | None = None
    received: int = 0
    ended: bool = False  # the worker sent everything it will send for it


class Fetching:
    """The router's side: the doorbell to the worker, the jobs in the order asked, and the byte credit owed."""

    def __init__(self, fetcher: Any, context: zmq.Context, chunksize: int) -> None:
        self.jobs: OrderedDict[int, Job] = OrderedDict()
        self.files: dict[str, int] = {}  # file_id -> its jobs here (a scan and an event may ask for one file)
        self._next = 0
        self._credit = 0
        self.socket = context.socket(zmq.PAIR)
        self.socket.linger = 0
        endpoint = f"inproc://hidra-fetch-{id(self):x}"
        self.socket.bind(endpoint)
        self.worker = FetchWorker(fetcher, context, endpoint, chunksize)
        self.worker.thread.start()

    def _ask(self, request: tuple[Any, ...], wake: bool = True) -> None:
        self.worker.requests.append(request)
        if wake and not self.worker.asked:
            self.worker.asked = True
            _ring(self.socket)

    def open(self, files: list[tuple[FileEvent, bool, str | None]]) -> None:
        """Ask for ``(event, force, identity not to read again)`` s, in one request."""
        asked = []
        for event, force, skip in files:
            job, self._next = self._next, self._next + 1
            self.jobs[job] = Job(event, force)
            self.files[event.file_id] = self.files.get(event.file_id, 0) + 1
            asked.append((job, event, skip))
        self._ask(("open", asked))

    def remove(self, event: FileEvent, stat: FileStat) -> None:
        self._ask(("remove", event, stat))

    def drop(self, job: int) -> Job | None:
        """Forget a job: its unsent chunks are credited, and the worker stops reading it."""
        dropped = self.jobs.pop(job, None)
        if dropped is not None:
            fid = dropped.event.file_id
            if self.files[fid] == 1:
                del self.files[fid]
            else:
                self.files[fid] -= 1
            if dropped.out is not None:
                self.credit(dropped.out.discard())
            if not dropped.ended:
                self._ask(("cancel", job))
        return dropped

    def credit(self, size: int) -> None:
        self._credit += size

    def flush(self) -> None:
        if self._credit:
            self._ask(("credit", self._credit), wake=self.worker.starved)
            self._credit = 0

    def messages(self) -> Iterator[tuple[Any, ...]]:
        """Every reply of the worker so far."""
        while self.socket.poll(0):
            self.socket.recv()
        # NOTE: cleared before the replies are taken: a reply appended after this rings again.
        self.worker.rung = False
        replies = self.worker.replies
        while replies:
            yield replies.popleft()

    @property
    def alive(self) -> bool:
        return self.worker.thread.is_alive()

    def close(self) -> None:
        self.worker.requests.append(("stop",))
        _ring(self.socket)
        self.worker.thread.join(timeout=2)  # NOTE: a read blocked on a dead share must not hold the stop up
        if self.worker.thread.is_alive():
            log.warning("the fetch worker is still blocked in the fetcher; leaving it behind")
        self.socket.close(linger=0)


def _ring(sock: zmq.Socket) -> None:
    """Wake the other side's poll; never blocks (a full pipe already holds doorbells)."""
    try:
        sock.send(b"", zmq.NOBLOCK)
    except zmq.ZMQError:
        pass
