"""The chaos tests' parts: a receiver and a sender that can be killed and restarted, and a watch on the source
tree that records, the moment each file goes, whether its copy was complete."""
from __future__ import annotations

import signal
import threading
from pathlib import Path

from inotify_simple import INotify, flags

from integration.hidra_proc import Hidra, intact, receiver_overrides, sender_overrides


class RemovalWatch:
    """Records, the moment each expected source file is deleted (inotify ``IN_DELETE``), whether its copy at the
    target was already complete under its final name; ``dirs`` (relative to ``source``) must exist already.

    The ``files`` writer publishes a final name only after the data and the directory entry are synced, so a
    complete final name is a durable copy.
    """

    def __init__(self, source: Path, target: Path, dirs: list[str], expected: dict[str, int]) -> None:
        self.target, self.expected = target, expected
        self.inotify = INotify()
        self.dirs = {self.inotify.add_watch(str(source / d), flags.DELETE | flags.MOVED_FROM): d for d in dirs}
        self.removed: set[str] = set()
        self.too_early: list[str] = []
        self.overflowed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="removal-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for event in self.inotify.read(timeout=20):
                if event.mask & flags.Q_OVERFLOW:
                    self.overflowed = True
                    continue
                rel = f"{self.dirs[event.wd]}/{event.name}".lstrip("./")
                if rel not in self.expected:
                    continue
                if not intact(self.target, rel, self.expected[rel]):
                    self.too_early.append(rel)
                self.removed.add(rel)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.inotify.close()

    def check(self) -> None:
        """Every removal was seen and came after its copy."""
        assert not self.overflowed, "the inotify queue overflowed: removals were not all checked"
        assert self.too_early == [], "removed at the source before a complete copy existed at the target"


class Pair:
    """A receiver and a sender on loopback, restartable with the same config, ports and ledger; the source has
    the subdirectories ``dirs`` from the start, ``target`` (default: ``base/target``) must exist if given."""

    def __init__(self, base: Path, dirs: list[str], sender_extra: list[str], receiver_extra: list[str] | None = None,
                 target: Path | None = None) -> None:
        self.base = base
        self.source, self.state = base / "source", base / "state"
        self.target = target or base / "target"
        for d in (self.target, self.state, *(self.source / d for d in dirs)):
            d.mkdir(parents=True, exist_ok=True)
        self.extra = {"sender": sender_extra, "receiver": receiver_extra or []}
        self.endpoints = ("tcp://127.0.0.1:0",) * 3
        self.procs: list[Hidra] = []
        self.receiver = self.start("receiver")
        self.endpoints = self.receiver.endpoints()  # NOTE: restarts reuse the ports, as on a real host
        self.sender = self.start("sender")

    def start(self, role: str, wait: bool = True) -> Hidra:
        if role == "receiver":
            overrides = receiver_overrides(self.target, *self.endpoints)
        else:
            overrides = sender_overrides(self.source, self.state, *self.endpoints[:2])
        proc = Hidra(role, self.base / f"{role}.log", [*overrides, *self.extra[role]])
        self.procs.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    def kill_and_restart(self, role: str, wait: bool = True) -> None:
        victim = self.receiver if role == "receiver" else self.sender
        victim.signal(signal.SIGKILL)
        victim.kill()
        if role == "receiver":
            self.receiver = self.start(role, wait)
        else:
            self.sender = self.start(role, wait)

    def close(self) -> None:
        for p in self.procs:
            p.kill()
