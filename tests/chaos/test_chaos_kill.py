"""Chaos: the sender or the receiver is SIGKILLed 20 times at random moments while 5,000 files move with source
removal on; nothing may be lost or corrupt, and no source file may vanish before its copy is durable.

The moments and victims come from a seeded RNG; the seed is printed (set ``HIDRA_CHAOS_SEED`` to replay a run).
Source removal is watched the whole time by inotify (``IN_DELETE``): the moment a source file goes, its copy at
the target must already be complete under its final name (the ``files`` writer publishes a name only after the
data and the directory entry are synced, so a complete final name is a durable copy).
"""
from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from inotify_simple import INotify, flags

from integration.hidra_proc import (Hidra, intact, no_part_files, receiver_overrides, sender_overrides, tree,
                                    wait_until, write_file)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILES = 5000
KILLS = 20
DIRS = 10
LEAD = 600  # files written ahead of those removed: new files keep coming while the processes die
REMOVE = "sender.storage.remove_source=after_confirmation"


def _size(i: int) -> int:
    return 16 + (i * 7919) % 2000


EXPECTED = {f"d{i % DIRS}/f{i:05d}.raw": _size(i) for i in range(FILES)}


class RemovalWatch:
    """Records, the moment each source file is deleted, whether its target copy was already complete."""

    def __init__(self, source: Path, target: Path) -> None:
        self.source, self.target = source, target
        self.inotify = INotify()
        self.dirs = {self.inotify.add_watch(str(source / f"d{d}"), flags.DELETE | flags.MOVED_FROM): f"d{d}"
                     for d in range(DIRS)}
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
                rel = f"{self.dirs[event.wd]}/{event.name}"
                if rel not in EXPECTED:
                    continue
                if not intact(self.target, rel, EXPECTED[rel]):
                    self.too_early.append(rel)
                self.removed.add(rel)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.inotify.close()


class Chaos:
    """A receiver and a sender on loopback that can be killed and restarted with the same config and ledger."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.source, self.target, self.state = base / "source", base / "target", base / "state"
        for d in (self.target, self.state, *(self.source / f"d{d}" for d in range(DIRS))):
            d.mkdir(parents=True)
        self.endpoints = ("tcp://127.0.0.1:0",) * 3
        self.procs: list[Hidra] = []
        self.receiver = self.start("receiver")
        self.endpoints = self.receiver.endpoints()  # NOTE: restarts reuse the ports, as on a real host
        self.sender = self.start("sender")

    def start(self, role: str, wait: bool = True) -> Hidra:
        if role == "receiver":
            overrides = receiver_overrides(self.target, *self.endpoints)
        else:
            overrides = [*sender_overrides(self.source, self.state, *self.endpoints[:2]), REMOVE]
        proc = Hidra(role, self.base / f"{role}.log", overrides)
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


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    pair = Chaos(tmp_path)
    try:
        yield pair
    finally:
        pair.close()


def _produce(source: Path, watch: RemovalWatch, failed: list[BaseException]) -> None:
    """Write the files in order, at most LEAD ahead of the removals."""
    try:
        for n, (rel, size) in enumerate(EXPECTED.items()):
            wait_until(lambda: n < len(watch.removed) + LEAD, 120, f"removals to catch up with file {n}")
            write_file(source / rel, size)
    except BaseException as exc:  # NOTE: handed to the test's thread, which fails with it
        failed.append(exc)


def test_20_sigkills_of_sender_or_receiver_during_5000_files_lose_nothing_and_remove_nothing_early(
        chaos: Chaos) -> None:
    seed = int(os.environ.get("HIDRA_CHAOS_SEED", time.time_ns() % 2**32))
    print(f"chaos seed {seed} (HIDRA_CHAOS_SEED={seed} replays the kill schedule)", file=sys.stderr)
    rng = random.Random(seed)
    at = sorted(rng.sample(range(FILES // 50, FILES - FILES // 50), KILLS))  # progress points of the kills
    watch = RemovalWatch(chaos.source, chaos.target)
    failed: list[BaseException] = []
    producer = threading.Thread(target=_produce, args=(chaos.source, watch, failed), daemon=True)
    producer.start()
    killed: list[str] = []
    try:
        for point in at:
            if len(killed) == KILLS:
                break
            wait_until(lambda: len(watch.removed) >= point or failed, 120, f"{point} sources removed (seed {seed})")
            time.sleep(rng.uniform(0, 0.05))  # NOTE: not synchronisation: the random moment within that progress
            killed.append(rng.choice(["sender", "receiver"]))
            # Now and then the restarted process dies again during its start-up (ledger, scan, binding).
            again = len(killed) < KILLS and rng.random() < 0.2
            chaos.kill_and_restart(killed[-1], wait=not again)
            if again:
                time.sleep(rng.uniform(0, 0.5))  # NOTE: the random moment of the second kill, not a wait for it
                killed.append(f"{killed[-1]}-starting")
                chaos.kill_and_restart(killed[-1].split("-")[0])
        wait_until(lambda: len(watch.removed) == FILES or failed, 180, f"every source removed (seed {seed})")
        producer.join(10)
    finally:
        watch.close()
    assert not failed, failed
    print(f"killed: {' '.join(killed)}", file=sys.stderr)
    assert not watch.overflowed, "the inotify queue overflowed: removals were not all checked"
    assert watch.too_early == [], f"removed before a complete copy existed (seed {seed})"
    assert tree(chaos.source) == {}
    corrupt = [rel for rel, size in EXPECTED.items() if not intact(chaos.target, rel, size)]
    assert corrupt == [], f"{len(corrupt)} lost or corrupt (seed {seed})"
    assert {rel: size for rel, size in tree(chaos.target).items() if not rel.startswith(".hidra-partial")} \
        == EXPECTED
    assert no_part_files(chaos.target)
