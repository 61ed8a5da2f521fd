from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from hidra_proc import Hidra, receiver_overrides, sender_overrides


class StoragePath:
    """A real receiver and sender process pair on loopback, in their own directories under tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.source = tmp_path / "source"
        self.target = tmp_path / "target"
        self.state = tmp_path / "state"
        for d in (self.source, self.target, self.state):
            d.mkdir()
        self.procs: list[Hidra] = []
        self.receiver: Hidra | None = None
        self.sender: Hidra | None = None
        self.data = self.confirmations = self.status = "tcp://127.0.0.1:0"

    def start_receiver(self, *extra: str) -> Hidra:
        self.receiver = Hidra("receiver", self.base / "receiver.log",
                              [*receiver_overrides(self.target, self.data, self.confirmations, self.status), *extra])
        self.procs.append(self.receiver)
        self.receiver.wait_ready()
        # Restarts reuse the ports the first run got, as a restarted receiver on a real host would.
        self.data, self.confirmations, self.status = self.receiver.endpoints()
        return self.receiver

    def start_sender(self, *extra: str, wait: bool = True) -> Hidra:
        self.sender = Hidra("sender", self.base / "sender.log",
                            [*sender_overrides(self.source, self.state, self.data, self.confirmations), *extra])
        self.procs.append(self.sender)
        if wait:
            self.sender.wait_ready()
        return self.sender

    def close(self) -> None:
        for p in self.procs:
            p.kill()


@pytest.fixture
def storage_path(tmp_path: Path) -> Iterator[StoragePath]:
    pair = StoragePath(tmp_path)
    try:
        yield pair
    finally:
        pair.close()
