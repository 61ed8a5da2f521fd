"""Supervising child processes: ``hidra up`` (sender and receiver), a receiver group's workers and plugins' own
compound commands (a broker, writers, a buffer), with one stopping rule for all."""
from __future__ import annotations

import logging
import signal
import subprocess
import time
from typing import Mapping

from hidra_core.host.notify import NotifyRelay

__all__ = ["STOP_MARGIN_S", "catch_signals", "exit_status", "kill", "stop_together", "supervise"]

log = logging.getLogger(__name__)

#: how long a child may take to stop after SIGTERM unless told otherwise (its start-up or close may still run)
STOP_MARGIN_S = 10.0


def supervise(children: Mapping[str, subprocess.Popen], limits: Mapping[str, float] | None = None,
              relay: NotifyRelay | None = None) -> int:
    """Wait for the children; on SIGTERM/SIGINT/SIGHUP or when one exits, stop them all, one after the other in
    the order given (the one that feeds the others first).

    Each child gets SIGTERM and its limit (``limits[name]``, default ``STOP_MARGIN_S``), then SIGKILL. A second
    signal kills every child at once. Returns the first failing child's status (128 + N for signal N), else 0.
    ``relay``: under systemd, the children that notify (started with ``relay.child_env()``) report through it.
    """
    limits = limits or {}
    signals = catch_signals()
    order = [(name, child, limits.get(name, STOP_MARGIN_S)) for name, child in children.items()]
    code = 0
    while not signals and all(c.poll() is None for c in children.values()):
        if relay is not None:
            relay.poll()
        time.sleep(0.1)
    if relay is not None:
        relay.stopping()
        relay.close()
    for name, child in children.items():
        if child.poll() is not None and not signals:
            if child.returncode == 0:  # NOTE: told to stop (POST /stop or /drain of its REST API): not a failure
                log.info("the %s stopped; stopping the others", name)
                continue
            log.error("the %s exited with status %s; stopping", name, exit_status(child))
            code = exit_status(child) or 1
    for name, child, limit in order:
        if not stop_together({name: child}, limit, signals):
            log.warning("second signal: killing %s at once", " and ".join(n for n, c, _ in order if c.poll() is None))
            for _, other, _ in order:
                kill(other)
            return 128 + signals[-1]
    return code or next((exit_status(c) for c in children.values() if c.returncode), 0)


def catch_signals(*, keep_ignored_sigint: bool = False) -> list[int]:
    """Record SIGTERM, SIGINT and SIGHUP in the returned list instead of dying of them.

    ``keep_ignored_sigint``: an ignored SIGINT stays ignored (a child of ``hidra up``, which keeps Ctrl-C to
    itself so that it can stop the sender before the receiver)."""
    signals: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if keep_ignored_sigint and sig == signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
            continue
        signal.signal(sig, lambda signum, _frame: signals.append(signum))
    return signals


def exit_status(child: subprocess.Popen) -> int:
    """A child's exit status as a shell reports it (128 + N when signal N ended it)."""
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


def stop_together(children: Mapping[str, subprocess.Popen], limit: float, signals: list[int]) -> bool:
    """SIGTERM every child at once and wait up to ``limit`` s for them all (then SIGKILL those left); False when
    a second signal came meanwhile (the caller kills them at once)."""
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + limit
    waiting = dict(children)
    while waiting:
        if len(signals) > 1:
            return False
        for name, child in list(waiting.items()):
            if child.poll() is not None:
                log.info("the %s stopped with status %s", name, exit_status(child))
                del waiting[name]
            elif time.monotonic() > deadline:
                log.error("the %s did not stop within %.0f s: killing it", name, limit)
                kill(child)
        if waiting:
            time.sleep(0.05)
    return True


def kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()
