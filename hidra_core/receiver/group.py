"""A one-host storage receiver group (``hidra receiver --workers N``): N plain ``hidra receiver`` processes on one
target directory, worker i on the data, confirmation and REST ports + i, worker 0 alone on the status port.

The parent starts them, prefixes each one's log lines with ``[worker i]``, learns their bound endpoints from
their ready lines, restarts one that dies on the same endpoints (so that the senders' lists stay right) and
stops them all on SIGTERM/SIGINT/SIGHUP.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import IO, Sequence

from hidra_core.config import ReceiverConfig
from hidra_core.errors import ConfigError, HidraError
from hidra_core.host.notify import ENV_VARS as NOTIFY_ENV
from hidra_core.host.notify import Notifier
from hidra_core.host.supervise import STOP_MARGIN_S, catch_signals, exit_status, kill, stop_together

__all__ = ["WorkerEndpoints", "prepare_worker", "run_group", "sender_overrides", "worker_endpoints"]

log = logging.getLogger(__name__)

#: set in each worker's environment to the parent's pid (see ``prepare_worker``)
PARENT_ENV = "HIDRA_RECEIVER_GROUP_PARENT"
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
_READY = re.compile(r"hidra receiver ready: data (.+?), confirmations (.+?), status (.+?), rest (\S+), target ")
_WILDCARD_HOSTS = {"*", "0.0.0.0", "::", "[::]"}
_PRINT_LOCK = threading.Lock()


@dataclass(frozen=True)
class WorkerEndpoints:
    """What one worker binds; ``status`` is None for all but worker 0, ``rest`` (``tcp://host:port``) None when
    receiver.rest is off."""

    data: str
    confirmations: str
    status: str | None
    rest: str | None = None


def worker_endpoints(cfg: ReceiverConfig, origin: str) -> list[WorkerEndpoints]:
    """Each worker's endpoints: data, confirmation and REST ``tcp`` ports + i (port 0 stays 0: each picks its own),
    ``ipc`` paths + ``.i`` (worker 0 keeps the configured ones); ``ConfigError`` names the key of an endpoint
    that cannot be spread so, and of endpoints that would collide."""
    n = cfg.workers
    data = _spread(cfg.data, "receiver.data", n, origin)
    confirmations = _spread(cfg.confirmations, "receiver.confirmations", n, origin)
    rest = (_spread(f"tcp://{cfg.rest.address}", "receiver.rest.address", n, origin) if cfg.rest.enabled else
            [None] * n)
    plan = [WorkerEndpoints(d, c, cfg.status if i == 0 else None, r)
            for i, (d, c, r) in enumerate(zip(data, confirmations, rest))]
    _refuse_collisions(plan, n, origin)
    return plan


def _spread(endpoint: str, key: str, n: int, origin: str) -> list[str]:
    scheme, _, address = endpoint.partition("://")
    if scheme == "ipc":
        return [endpoint if i == 0 else f"{endpoint}.{i}" for i in range(n)]
    if scheme != "tcp":
        why = ("an inproc endpoint is reachable only inside one process" if scheme == "inproc" else
               f"only tcp (port + i) and ipc (path.i) endpoints can be given one per worker, not {scheme}")
        raise ConfigError(origin, [f"{key}: {endpoint}: {why}; a receiver group (receiver.workers={n}) needs a"
                                   " tcp or ipc endpoint"])
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isdigit() or port == "*"):
        raise ConfigError(origin, [f"{key}: {endpoint}: no port to give each worker of the group its own"])
    if port in ("*", "0") or int(port) == 0:
        return [endpoint] * n  # NOTE: ephemeral: each worker binds its own, the ready lines tell which
    if int(port) + n - 1 > 65535:
        raise ConfigError(origin, [f"{key}: {endpoint}: ports {port}-{int(port) + n - 1} for receiver.workers={n}"
                                   " go past 65535"])
    return [f"tcp://{host}:{int(port) + i}" for i in range(n)]


def _refuse_collisions(plan: list[WorkerEndpoints], n: int, origin: str) -> None:
    # NOTE: the REST ports last, so that a clash of the data path's own ports is the one named
    bound = [(key, i, getattr(w, key)) for keys in (("data", "confirmations", "status"), ("rest",))
             for i, w in enumerate(plan) for key in keys if getattr(w, key) is not None]
    for x, (key_a, i, a) in enumerate(bound):
        for key_b, j, b in bound[x + 1:]:
            if _clash(a, b):
                ranges = ", ".join(f"receiver.{k} {_range(getattr(plan[0], k), n if k != 'status' else 1)}"
                                   for k in ("data", "confirmations", "status", "rest")
                                   if getattr(plan[0], k) is not None)
                raise ConfigError(origin, [
                    f"receiver.{key_b}: worker {j} would bind {b}, which worker {i} binds as receiver.{key_a}:"
                    f" worker i binds the data and confirmation ports + i, so with receiver.workers={n} these must"
                    f" not overlap: {ranges}; move one of them"])


def _range(endpoint: str, n: int) -> str:
    port = endpoint.rpartition(":")[2]
    return f"{endpoint}-{int(port) + n - 1}" if n > 1 and endpoint.startswith("tcp://") and port.isdigit() else endpoint


def _clash(a: str, b: str) -> bool:
    """Whether two concrete endpoints would be the same address (ephemeral ports never clash)."""
    if a.startswith("ipc://") or b.startswith("ipc://"):
        return a == b
    (host_a, _, port_a), (host_b, _, port_b) = (e.partition("://")[2].rpartition(":") for e in (a, b))
    if port_a != port_b or not port_a.isdigit() or int(port_a) == 0:
        return False
    return host_a == host_b or host_a in _WILDCARD_HOSTS or host_b in _WILDCARD_HOSTS


def sender_overrides(cfg: ReceiverConfig, origin: str) -> list[str]:
    """``--set`` assignments that point a sender on this host at the group (``hidra up --workers N``)."""
    plan = worker_endpoints(cfg, origin)
    for key in ("data", "confirmations"):
        if getattr(cfg, key).startswith("tcp://") and getattr(cfg, key).rpartition(":")[2] in ("0", "*"):
            raise ConfigError(origin, [f"receiver.{key}: {getattr(cfg, key)}: an ephemeral port cannot be told to"
                                       " the sender in advance; give a fixed port"])
    data = [_connectable(w.data) for w in plan]
    confirmations = [_connectable(w.confirmations) for w in plan]
    return [f"sender.storage.data={json.dumps(data)}", f"sender.storage.confirmations={json.dumps(confirmations)}"]


def _connectable(endpoint: str) -> str:
    host, _, port = endpoint.partition("://")[2].rpartition(":")
    return f"tcp://127.0.0.1:{port}" if endpoint.startswith("tcp://") and host in _WILDCARD_HOSTS else endpoint


def prepare_worker() -> None:
    """In a worker (its environment names the parent): die with the parent, and log the ready line the parent
    reads at any log level."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    logging.getLogger("hidra_core.receiver.loop").setLevel(logging.INFO)
    if sys.platform.startswith("linux"):
        # NOTE: PR_SET_PDEATHSIG: a parent killed with SIGKILL (a second Ctrl-C of `hidra up`) cannot stop its
        # workers itself; the kernel does. What they had not confirmed is re-sent, as after any crash.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):
        raise HidraError(f"the receiver group's parent (pid {parent}) has gone; not starting")


class _Worker:
    """One worker process, its log pump thread and what its ready line said."""

    def __init__(self, index: int, endpoints: WorkerEndpoints, argv: Sequence[str]) -> None:
        self.index = index
        self.endpoints = endpoints
        self.argv = list(argv)
        self.proc: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.started = 0.0
        self.backoff = FIRST_BACKOFF_S
        self.restart_at: float | None = None

    def start(self) -> None:
        e = self.endpoints
        sets = {"receiver.workers": "1", "receiver.data": json.dumps(e.data),
                "receiver.confirmations": json.dumps(e.confirmations),
                "receiver.status": json.dumps(e.status) if e.status is not None else "null"}
        if e.rest is not None:
            sets["receiver.rest.address"] = json.dumps(e.rest.partition("://")[2])
        argv = [*self.argv, *(a for key, value in sets.items() for a in ("--set", f"{key}={value}"))]
        self.ready = threading.Event()
        # NOTE: a session of its own: Ctrl-C in a terminal (SIGINT to the process group) reaches only the
        # parent, which stops every worker once, instead of each worker getting it twice (a second signal
        # stops a receiver at once).
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, start_new_session=True,
                                     env={**{k: v for k, v in os.environ.items() if k not in NOTIFY_ENV},
                                          PARENT_ENV: str(os.getpid())})  # NOTE: systemd hears the parent only
        self.started = time.monotonic()
        self.restart_at = None
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.ready), name=f"hidra-worker-{self.index}",
                         daemon=True).start()

    def _pump(self, stream: IO[bytes], ready: threading.Event) -> None:
        """Copy the worker's log lines to ours with its number; note its ready line's endpoints."""
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            # NOTE: a JSON line (--log-format json) gets the worker as a field; a prefix would break it
            shown = (f'{{"worker": {self.index}, {line[1:]}' if line.startswith("{") and line.endswith("}")
                     else f"[worker {self.index}] {line}")
            try:
                with _PRINT_LOCK:
                    sys.stderr.write(shown + "\n")
                    sys.stderr.flush()
            except (OSError, ValueError):
                pass  # NOTE: our stderr is gone; keep draining the pipe, or the worker blocks on its next line
            m = _READY.search(line)
            if m and not ready.is_set():
                status = None if m.group(3) == "none" else m.group(3)
                rest = None if m.group(4) == "none" else m.group(4).replace("http://", "tcp://")
                self.endpoints = replace(self.endpoints, data=m.group(1), confirmations=m.group(2), status=status,
                                         rest=rest)
                ready.set()
        stream.close()

    def check(self, now: float) -> None:
        """Restart the worker once its back-off has passed, or schedule that when it has exited."""
        assert self.proc is not None
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        if self.proc.poll() is None:
            if now - self.started >= MAX_BACKOFF_S:
                self.backoff = FIRST_BACKOFF_S  # NOTE: it ran long enough: the next death is not a crash loop
            return
        e = self.endpoints
        log.warning("receiver group: worker %d exited with status %s; restarting it in %.0f s on data %s,"
                    " confirmations %s", self.index, exit_status(self.proc), self.backoff, e.data, e.confirmations)
        self.restart_at = now + self.backoff
        self.backoff = min(2 * self.backoff, MAX_BACKOFF_S)


def run_group(cfg: ReceiverConfig, argv: Sequence[str], origin: str) -> int:
    """Run ``cfg.workers`` workers (``argv``: the ``hidra receiver`` command line each starts from) until a
    signal; exit status as ``supervise`` gives."""
    workers = [_Worker(i, e, argv) for i, e in enumerate(worker_endpoints(cfg, origin))]
    signals = catch_signals(keep_ignored_sigint=True)
    notifier = Notifier()
    try:
        for worker in workers:
            worker.start()
        code = _await_ready(workers, signals)
        if code is None:
            data, confirmations = ([getattr(w.endpoints, k) for w in workers] for k in ("data", "confirmations"))
            rest = ", ".join(w.endpoints.rest.replace("tcp://", "http://") for w in workers if w.endpoints.rest)
            log.info("hidra receiver group ready: %d workers; data [%s], confirmations [%s], rest [%s]", len(workers),
                     ", ".join(data), ", ".join(confirmations), rest)
            log.info("sender: --set 'sender.storage.data=[%s]' --set 'sender.storage.confirmations=[%s]'",
                     ", ".join(data), ", ".join(confirmations))
            notifier.ready(f"{len(workers)} workers")
            while not signals:
                notifier.tick()
                for worker in workers:
                    worker.check(time.monotonic())
                time.sleep(0.1)
        notifier.stopping()
        return _stop(workers, signals, code)
    finally:
        for worker in workers:
            if worker.proc is not None:
                kill(worker.proc)


def _await_ready(workers: list[_Worker], signals: list[int]) -> int | None:
    """None once every worker is ready; else the status to exit with (a worker that failed to start)."""
    while not signals:
        if all(w.ready.is_set() for w in workers):
            return None
        for w in workers:
            assert w.proc is not None
            if w.proc.poll() is not None and not w.ready.is_set():
                log.error("receiver group: worker %d exited with status %s before it was ready; stopping the"
                          " others", w.index, exit_status(w.proc))
                return exit_status(w.proc) or 1
        time.sleep(0.05)
    return 0


def _stop(workers: list[_Worker], signals: list[int], code: int | None) -> int:
    procs = {f"worker {w.index}": w.proc for w in workers if w.proc is not None}
    if not stop_together(procs, STOP_MARGIN_S, signals):
        log.warning("second signal: killing every worker at once")
        for proc in procs.values():
            kill(proc)
        return 128 + signals[-1]
    return code or next((exit_status(p) for p in procs.values() if p.returncode), 0)
