from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from hidra_proc import Hidra, receiver_overrides, sender_overrides, wait_until


class StoragePath:
    """Real receiver and sender processes on loopback, in their own directories under tmp_path: one receiver, or
    a storage receiver group of ``members`` processes on one target (and a sender with ``streams`` pipelines)."""

    def __init__(self, tmp_path: Path, members: int = 1, streams: int = 1) -> None:
        self.base = tmp_path
        self.source = tmp_path / "source"
        self.target = tmp_path / "target"
        self.state = tmp_path / "state"
        for d in (self.source, self.target, self.state):
            d.mkdir()
        self.procs: list[Hidra] = []
        self.streams = streams
        self.receivers: list[Hidra | None] = [None] * members
        self.sender: Hidra | None = None
        self.endpoints = [("tcp://127.0.0.1:0",) * 3 for _ in range(members)]

    @property
    def receiver(self) -> Hidra | None:
        return self.receivers[0]

    @property
    def data(self) -> str:
        return _listed([data for data, _conf, _status in self.endpoints])

    @property
    def confirmations(self) -> str:
        return _listed([conf for _data, conf, _status in self.endpoints])

    def start_receiver(self, *extra: str) -> Hidra:
        """Start every receiver that is not running (all of the group)."""
        for i, running in enumerate(self.receivers):
            if running is not None and running.proc.poll() is None:
                continue
            data, confirmations, status = self.endpoints[i]
            receiver = Hidra("receiver", self.base / f"receiver{i or ''}.log",
                             [*receiver_overrides(self.target, data, confirmations, status), *extra])
            self.procs.append(receiver)
            receiver.wait_ready()
            # Restarts reuse the ports the first run got, as a restarted receiver on a real host would.
            self.endpoints[i] = receiver.endpoints()
            self.receivers[i] = receiver
        assert self.receiver is not None
        return self.receiver

    def start_sender(self, *extra: str, wait: bool = True) -> Hidra:
        self.sender = Hidra("sender", self.base / "sender.log",
                            [*sender_overrides(self.source, self.state, self.data, self.confirmations),
                             f"sender.streams={self.streams}", *extra])
        self.procs.append(self.sender)
        if wait:
            self.sender.wait_ready()
            if len(self.endpoints) > 1:  # NOTE: files go only to members it knows are up; tests want all three
                sender = self.sender
                wait_until(lambda: all(f"storage receiver at {data} is up" in sender.text()
                                       for data, _conf, _status in self.endpoints), 20, "every member up")
        return self.sender

    def close(self) -> None:
        for p in self.procs:
            p.kill()


def _listed(endpoints: list[str]) -> str:
    return endpoints[0] if len(endpoints) == 1 else f"[{', '.join(endpoints)}]"


#: the storage path as one pipeline and one receiver, and as the issue-11 layout: 4 pipelines, a group of 3
LAYOUTS = {"single": (1, 1), "group": (3, 4)}


@pytest.fixture
def storage_path(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StoragePath]:
    members, streams = LAYOUTS[getattr(request, "param", "single")]
    pair = StoragePath(tmp_path, members, streams)
    try:
        yield pair
    finally:
        pair.close()
