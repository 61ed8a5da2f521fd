"""The storage receiver: reassembles chunks into files through its writers, commits them durably in groups,
and only then confirms them (hidra4-protocol.md §7, §9 D2 and D5).

The receiving loop (calling thread) owns the data PULL and status REP sockets and the partial files; the commit
thread owns the confirmation PUB socket, makes batches of complete files durable and publishes their
confirmations and the liveness beacon. Commits overlap with receiving.
"""
from __future__ import annotations

import logging
import os
import queue
import resource
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

import zmq

from hidra_core.checksum import ALGORITHMS, new_hasher
from hidra_core.config import InstanceConfig
from hidra_core.errors import PathRefused, ProtocolError, shown
from hidra_core.interfaces import WriteTarget
from hidra_core.host.build import build_receiver
from hidra_core.host.kernel import Endpoints, StopFlag
from hidra_core.host.notify import Notifier
from hidra_core.paths import split_checked
from hidra_core.host.plugins import PluginHost
from hidra_core.protocol import UnknownType, decode_data, is_alive_test
from hidra_core.receiver.commit import FILES_LOGGER, CommitItem, CommitThread
from hidra_core.receiver.partials import Partial, Partials
from hidra_core.receiver.status import StatusBoard, Summary
from hidra_core.rest.snapshot import receiver_snapshot

__all__ = ["Receiver"]

log = logging.getLogger(__name__)
_DROPPED_FILES = 1024  # files dropped mid-way, remembered so that the rest of their chunks are not reported each


def _raise_fd_limit() -> None:
    """Files waiting for a group commit hold a descriptor each: allow up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Receiver:
    role = "receiver"

    def __init__(self, config: InstanceConfig, host: PluginHost, *, source_name: str = "<defaults>") -> None:
        self.instance_config = config
        self.config = cfg = config.receiver
        self.host = host
        self.stop = StopFlag()
        self.notifier = Notifier()
        self.context = zmq.Context()
        built = build_receiver(config, source_name, self.context)
        self.writers, self.endpoints = built.writers, built.endpoints
        self.instance = uuid.uuid4().hex
        self.status = StatusBoard()
        self.stats = {"stored": 0, "bytes": 0, "refused": 0, "malformed": 0, "unknown_type": 0, "unrouted": 0,
                      "failed": 0, "alive_tests": 0}
        self._partials = Partials(cfg.max_unfinished_per_sender, cfg.max_unfinished, self._abort)
        self._dropped: OrderedDict[str, None] = OrderedDict()  # files dropped mid-way (see _drop_rest)
        self._commits: queue.Queue[CommitItem | None] = queue.Queue()
        self.rest: Any = None  # the REST server (hidra_core.rest), None when receiver.rest is off
        self.snapshot: dict[str, Any] = {}  # what the REST thread reads; replaced whole, never changed
        if not cfg.log_each_file:
            logging.getLogger(FILES_LOGGER).setLevel(logging.WARNING)

    def run(self) -> int:
        self.stop.install()
        _raise_fd_limit()
        self.host.startup(self)
        committer = CommitThread(self)
        try:
            self.data = open_input(self.endpoints, zmq.PULL, self.config.data, self.config.hwm, "data")
            self.status_socket = (open_input(self.endpoints, zmq.REP, self.config.status, 100, "status")
                                  if self.config.status is not None else None)
            committer.start()
            confirmations = committer.wait_bound()
            self._start_cleanup()
            self._start_rest(committer)
            log.info("hidra receiver ready: data %s, confirmations %s, status %s, rest %s, target %s",
                     Endpoints.bound(self.data), confirmations,
                     Endpoints.bound(self.status_socket) if self.status_socket is not None else "none",
                     self.rest.url if self.rest is not None else "none", os.path.abspath(self.config.target))
            self.notifier.ready(f"storing below {os.path.abspath(self.config.target)}")
            return self._loop(committer)
        finally:
            if self.rest is not None:
                self.snapshot = receiver_snapshot(self, "stopping", committer)
                self.rest.stop()
            self._commits.put(None)
            committer.join()
            self._close()

    def _start_rest(self, committer: CommitThread) -> None:
        if not self.config.rest.enabled:
            return
        from hidra_core.rest.server import RestServer

        self.snapshot = receiver_snapshot(self, "starting", committer)
        self.rest = RestServer(self, self.config.rest, lambda: self.snapshot, self.stop.set)
        self.rest.start()

    def _start_cleanup(self) -> None:
        started = time.time()

        def clean() -> None:
            for writer in self.writers:
                try:
                    writer.cleanup(started)
                except Exception:
                    log.exception("clean-up of writer %s failed", type(writer).__name__)

        threading.Thread(target=clean, name="hidra-cleanup", daemon=True).start()

    def _close(self) -> None:
        for partial in self._partials.drain():
            self._abort(partial)
        for writer in self.writers:
            try:
                writer.shutdown()
            except Exception:
                log.exception("shutting writer %s down failed", type(writer).__name__)
        for name in ("data", "status_socket"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        # NOTE: destroy() closes any socket still open from *this* thread; the commit thread closed its PUB
        # socket itself before run() joined it, so no socket is ever touched by two threads.
        self.endpoints.close()
        self.context.destroy(linger=0)
        log.info("hidra receiver stopped: %s", self.stats)
        self.host.shutdown(self)

    def _loop(self, committer: CommitThread) -> int:
        poller = zmq.Poller()
        poller.register(self.data, zmq.POLLIN)
        if self.status_socket is not None:
            poller.register(self.status_socket, zmq.POLLIN)
        next_expiry = time.monotonic() + 1.0
        summary = Summary(self.config.summary_interval_s, self.stats)
        # NOTE: files wait for their commit with an open descriptor; while the commit thread is behind
        # (a slow fsync), stop taking data so back-pressure reaches the sender instead of exhausting fds.
        backlog = 2 * self.config.commit_batch
        if self.rest is not None:
            self.snapshot = receiver_snapshot(self, "running", committer)
        while not self.stop.is_set():
            self.notifier.tick()
            if not committer.alive():
                log.error("the commit thread died (see above); stopping: nothing could be stored or confirmed")
                return 1
            poller.modify(self.data, zmq.POLLIN if self._commits.qsize() < backlog else 0)
            ready = dict(poller.poll(100))
            if self.data in ready:
                self._take_data()
            if self.status_socket is not None and self.status_socket in ready:
                self.status_socket.send_multipart(self.status.answer(self.status_socket.recv_multipart()))
            if time.monotonic() >= next_expiry:
                self._partials.expire()
                summary.tick(len(self._partials), self._commits.qsize(), self._partials.dropped)
                if self.rest is not None:
                    self.snapshot = receiver_snapshot(self, "running", committer)
                next_expiry = time.monotonic() + 1.0
        self.notifier.stopping()
        return 0

    def _take_data(self) -> None:
        for _ in range(1000):  # then serve the status socket and the stop flag again
            try:
                frames = self.data.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if is_alive_test(frames):
                self.stats["alive_tests"] += 1
                continue
            try:
                self._chunk(frames)
            except PathRefused as exc:
                self._refuse("refused", exc, "path refused")
            except UnknownType as exc:
                self._refuse("unknown_type", exc, "message of an unknown type dropped")
            except Unrouted as exc:
                self._refuse("unrouted", exc, "message dropped, not confirmed")
            except ProtocolError as exc:
                self._refuse("malformed", exc, "malformed message dropped")
            except Exception as exc:  # OSError, or a third-party writer's bug: the file is lost here, not the receiver
                self.stats["failed"] += 1
                self.status.error(exc)
                log.error("writing failed: %s: %s", type(exc).__name__, exc)

    def _refuse(self, counter: str, exc: Exception, what: str) -> None:
        self.stats[counter] += 1
        self.status.error(exc)
        log.error("%s: %s (%d so far)", what, exc, self.stats[counter])

    def _chunk(self, frames: list[Any]) -> None:
        msg = decode_data(frames)
        parts, filename = split_checked(msg.relative_path, msg.filename)
        fid = msg.file_id
        # NOTE: read-only, so that writers may keep the view until close() (the receiver never reuses it)
        payload = msg.payload.buffer.toreadonly()
        partial = self._partials.get(fid)
        if msg.chunk_number == 0:
            if partial is not None:  # a re-sent file restarts (4.x rule)
                self._abort(self._partials.pop(fid))
            _topic_of(msg.metadata)  # refused before anything is opened
            self._dropped.pop(fid, None)
            try:
                partial = self._open(WriteTarget(self.config.target, parts, filename, msg.metadata, msg.kind,
                                                 msg.series))
            except ProtocolError:
                raise
            except Exception as exc:
                return self._write_failed(fid, exc)
            partial.sender = _sender_of(msg.metadata, frames[0])
            self._partials.add(fid, partial)
        elif partial is None or msg.chunk_number != partial.next_chunk:
            if partial is None and fid in self._dropped:
                return  # NOTE: the rest of a file dropped and reported (a failed write, a sender's break)
            if partial is not None and msg.chunk_number == partial.next_chunk - 1:
                return  # a repeated chunk is ignored (4.x rule)
            if partial is not None:
                self._abort(self._partials.pop(fid))
            self._drop_rest(fid)
            raise ProtocolError(f"{fid}: chunk {msg.chunk_number} arrived out of order; file dropped (its later"
                                " chunks without a report)")
        try:
            for writer, handle in zip(self.writers, partial.handles):
                if handle is not None:
                    writer.write(handle, payload)
        except Exception as exc:
            self._abort(self._partials.pop(fid))
            return self._write_failed(fid, exc)
        if partial.hasher is not None:
            partial.hasher.update(payload)
        partial.next_chunk += 1
        partial.size += len(payload)
        self._partials.touch(fid)
        if msg.is_last:
            self._complete(fid, self._partials.pop(fid), msg.metadata, msg.filesize)

    def _write_failed(self, fid: str, exc: Exception) -> None:
        """A file that could not be written (a full disk) is dropped unconfirmed, so the sender sends it again;
        its remaining chunks are dropped without a report of their own."""
        self.stats["failed"] += 1
        self.status.error(exc)
        log.error("writing %s failed, not confirmed: %s: %s", fid, type(exc).__name__, exc)
        self._drop_rest(fid)

    def _drop_rest(self, fid: str) -> None:
        """The remaining chunks of a file dropped mid-way are dropped without a report each; the sender sends
        the file again from its first chunk, which starts it over."""
        self._dropped[fid] = None
        while len(self._dropped) > _DROPPED_FILES:
            self._dropped.popitem(last=False)

    def _open(self, target: WriteTarget) -> Partial:
        """Open the message in every writer that takes its type (``None`` stands for the others)."""
        if not any(target.kind in writer.accepts for writer in self.writers):
            raise Unrouted(f"{target.relative_name}: no writer of this receiver takes {target.kind!r} messages"
                           f" (writers: {', '.join(self.config.writers)}); add one that does to receiver.writers")
        algorithm = target.metadata.get("checksum_algorithm")
        known = isinstance(algorithm, str) and algorithm in ALGORITHMS
        handles: list[Any] = []
        try:
            for writer in self.writers:
                handles.append(writer.open(target) if target.kind in writer.accepts else None)
        except Exception:
            self._abort(Partial(target, handles, None, None))
            raise
        if not known or not isinstance(algorithm, str):
            return Partial(target, handles, None, None)
        return Partial(target, handles, new_hasher(algorithm), algorithm)

    def _complete(self, fid: str, partial: Partial, meta: dict[str, Any], filesize: int) -> None:
        problem = ""
        expected_sum = meta.get("file_checksum")
        checksum = partial.hasher.hexdigest() if partial.hasher is not None else None
        if partial.size != filesize:
            problem = f"received {partial.size} bytes, filesize says {filesize}"
        elif isinstance(meta.get("chunk_count"), int) and meta["chunk_count"] != partial.next_chunk:
            problem = f"received {partial.next_chunk} chunks, chunk_count says {meta['chunk_count']}"
        elif checksum is not None and isinstance(expected_sum, str) and checksum != expected_sum:
            problem = f"{partial.algorithm} checksum {checksum} does not match the sender's {expected_sum}"
        if problem:
            self._abort(partial)
            raise ProtocolError(f"{fid}: {problem}; file dropped, not confirmed")
        try:
            topic = _topic_of(meta)
            for writer, handle in zip(self.writers, partial.handles):
                if handle is not None:
                    writer.close(handle)
        except Exception:
            self._abort(partial)
            raise
        self._commits.put(CommitItem(fid, partial.handles, topic, partial.next_chunk, partial.algorithm, checksum,
                                     partial.size, partial.started, partial.target.kind))

    def _abort(self, partial: Partial) -> None:
        for writer, handle in zip(self.writers, partial.handles):
            if handle is None:
                continue
            try:
                writer.abort(handle)
            except Exception:
                log.exception("writer %s could not abort %s", type(writer).__name__, partial.target.relative_name)


class Unrouted(ProtocolError):
    """No writer of this receiver takes the message's type."""


def open_input(endpoints: Endpoints, socket_type: int, endpoint: str, hwm: int,
               name: str = "data") -> zmq.Socket:
    """Bind a socket the receiving loop reads from, without ZMTP heartbeats of its own.

    NOTE: libzmq 4.3 aborts the whole process (``Assertion failed: !_io_error (stream_engine_base.cpp:310)``)
    when a connection whose input is stopped by back-pressure (a full receive queue: the loop is not reading
    while commits are behind) loses its peer and then fires its heartbeat timer. The peers' own heartbeats
    and TCP keepalive still detect dead connections.
    """
    def no_heartbeats(sock: zmq.Socket) -> None:
        sock.heartbeat_ivl = 0

    return endpoints.open(socket_type, endpoint, bind=True, hwm=hwm, prepare=no_heartbeats, name=name)


def _topic_of(meta: dict[str, Any]) -> bytes | None:
    """The confirmation topic the sender asked for, as sent on the wire; None if it asked for none."""
    topic = meta.get("confirmation_required")
    if not isinstance(topic, str) or not topic:
        return None
    try:
        return topic.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"field 'confirmation_required' {shown(topic)} is not valid UTF-8 text") from None


def _sender_of(meta: dict[str, Any], frame: Any) -> str:
    """Who sent a file, for the bound on unfinished files: its confirmation topic, else its address."""
    topic = meta.get("confirmation_required")
    if isinstance(topic, str) and topic:
        return topic
    try:
        return str(frame.get("Peer-Address"))
    except (zmq.ZMQError, AttributeError):  # not every transport knows the peer
        return ""
