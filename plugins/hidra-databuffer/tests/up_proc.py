"""Test helpers: ``hidra databuffer up`` as a real process on free ports, fed by the real bsread sender
(``Stream``) at 100 Hz; fixture ``up``."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import requests


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Stream(threading.Thread):
    """The real bsread sender (PUSH, bound), paced against absolute deadlines at ``rate`` Hz.

    Pulse ids are 1000, 1001, ... except every 7th, which is skipped (a gap); the waveform is None every 5th pulse.
    """

    def __init__(self, port: int, rate: float = 100.0) -> None:
        super().__init__(daemon=True)
        self.port, self.rate = port, rate
        self.sent: dict[int, dict[str, Any]] = {}
        self.stop = threading.Event()

    @staticmethod
    def values(pulse: int) -> dict[str, Any]:
        return {"T:SCALAR": float(pulse) / 10, "T:STR": f"pulse {pulse}",
                "T:WAVE": None if pulse % 5 == 0 else np.arange(1024, dtype="float32") + pulse,
                "T:IMG": (np.arange(512 * 512, dtype="uint16").reshape(512, 512) + pulse).astype("uint16")}

    def run(self) -> None:
        from bsread.sender import PUSH, Sender

        with Sender(port=self.port, mode=PUSH, block=True) as sender:
            sender.add_channel("T:SCALAR", metadata={"type": "float64"})
            sender.add_channel("T:STR", metadata={"type": "string"})
            sender.add_channel("T:WAVE", metadata={"type": "float32", "shape": [1024]})
            sender.add_channel("T:IMG", metadata={"type": "uint16", "shape": [512, 512],
                                                  "compression": "bitshuffle_lz4"})
            start, pulse = time.monotonic(), 1000
            while not self.stop.is_set():
                if pulse % 7 != 0:
                    values = self.values(pulse)
                    sender.send(data=values, pulse_id=pulse)
                    self.sent[pulse] = values
                pulse += 1
                delay = start + (pulse - 1000) / self.rate - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[dict[str, Any]]:
    stream_port, rest, output, query, *hidra = free_ports(10)
    stream = Stream(stream_port)
    stream.start()
    sets = buffer_sets(tmp_path, hidra)
    channels = tmp_path / "channels.txt"
    channels.write_text("# test channels\nT:SCALAR\nT:STR\nT:WAVE\nT:IMG\n")
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hidra_core", "databuffer", "up", "--source",
                             f"tcp://127.0.0.1:{stream_port}", "--query-port", str(query), "--rest_port", str(rest),
                             "--output_port", str(output), "--api_port", "0", "-c", str(channels), "--audit_file",
                             str(tmp_path / "audit.log"), *(a for s in sets for a in ("--set", s))],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield {"proc": proc, "rest": f"http://127.0.0.1:{rest}", "query": f"http://127.0.0.1:{query}",
               "stream": stream, "log": tmp_path / "up.log", "base": tmp_path, "sets": sets}
    finally:
        stream.stop.set()
        terminate(proc)
        log.close()
        stream.join(10)


def buffer_sets(base: Path, ports: list[int]) -> list[str]:
    """``--set`` values putting the buffer (a ``hidra up``) on five of these free ports and its files under
    ``base``."""
    keys = ("receiver.data", "sender.storage.data", "receiver.confirmations", "sender.storage.confirmations",
            "receiver.status", "sender.clients.com", "sender.clients.request")
    chosen = dict(zip(keys, (ports[0], ports[0], ports[1], ports[1], ports[2], ports[3], ports[4])))
    return [*(f"{k}=tcp://127.0.0.1:{p}" for k, p in chosen.items()), f"receiver.target={base / 'buffer'}",
            f"sender.ledger.path={base / 'ledger.sqlite'}", "sender.rest.address=127.0.0.1:0",
            "receiver.rest.address=127.0.0.1:0"]


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (its orderly stop), SIGKILL if it is not gone within a minute."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def get_json(url: str) -> Any:
    try:
        return requests.get(url, timeout=5).json()
    except (requests.ConnectionError, ValueError):
        return None
