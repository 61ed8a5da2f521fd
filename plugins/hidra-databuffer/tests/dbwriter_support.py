"""Shared by the writer and replay tests: writing requests as the broker builds them (§4), sent with the real
``bsread`` sender, writer subprocesses, and an HDF5 content walk."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zmq
from bsread.sender import Sender

from hidra_core.testing import wait_until

GENERAL = {"general/created": "2024-01-31T14:25:01", "general/user": "p12345", "general/process": "test_dbw",
           "general/instrument": "Alvra"}


def request_record(channels: list[str], start: int, end: int, output_file: str, age_s: float = 0.0,
                   **params: Any) -> dict[str, Any]:
    """The three-field writing request exactly as §4 shows it (inner fields are JSON strings)."""
    query = {"channels": [{"name": name, "backend": "sf-imagebuffer" if name.endswith(":FPICTURE")
                           else "sf-databuffer"} for name in channels],
             "range": {"startPulseId": start, "endPulseId": end},
             "response": {"format": "json", "compression": "none"},
             "eventFields": ["channel", "pulseId", "value", "shape", "globalDate"],
             "configFields": ["type", "shape"]}
    parameters = {**GENERAL, "output_file": output_file, **params}
    return {"data_api_request": json.dumps(query), "parameters": json.dumps(parameters),
            "timestamp": time.time() - age_s}


def audit_line(record: dict[str, Any]) -> str:
    """An audit line as §5 defines it, built here independently of the code under test."""
    return "[" + time.strftime("%Y%m%d-%H%M%S") + "] " + json.dumps(record)


class Broker:
    """A PUSH socket bound like the broker's, sending requests as the real ``bsread`` sender encodes them."""

    def __init__(self) -> None:
        # NOTE: port "*" = ZeroMQ picks a free one at bind; no probe socket, no race with other tests
        self.sender = Sender(port="*", address="tcp://127.0.0.1", queue_size=10, send_timeout=20000)
        self.sender.add_channel("data_api_request", metadata={"type": "string", "shape": [1]})
        self.sender.add_channel("parameters", metadata={"type": "string", "shape": [1]})
        self.sender.add_channel("timestamp", metadata={"type": "float64", "shape": [1]})
        self.sender.open()
        self.address = self.sender.stream.socket.getsockopt(zmq.LAST_ENDPOINT).decode()

    def send(self, record: dict[str, Any]) -> None:
        self.sender.send(record["data_api_request"], record["parameters"], record["timestamp"], check_data=False)

    def close(self) -> None:
        self.sender.close()


@dataclass
class WriterProc:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_writer(tmp_path: Path, address: str, url: str, *extra: str, name: str = "writer") -> WriterProc:
    log = tmp_path / f"{name}-{time.monotonic_ns()}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "hidra_databuffer.dbwriter.main", address, "-1",
                                 "--data_api_url", url, *extra], stdout=fh, stderr=subprocess.STDOUT, env=env)
    writer = WriterProc(proc, log)
    wait_until(lambda: "writer ready" in writer.text() or proc.poll() is not None, what="the writer's ready line")
    assert proc.poll() is None, writer.text()
    return writer


def walk(path: Path) -> Iterator[tuple[str, h5py.Group | h5py.Dataset]]:
    with h5py.File(path, "r") as h5:
        found: list[tuple[str, Any]] = [("/", h5)]
        h5.visititems(lambda name, obj: found.append((name, obj)))
        yield from found


def content(path: Path) -> dict[str, Any]:
    """Every dataset as (dtype, shape, values), every group and every attribute: what 'identical' compares."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as h5:
        def visit(name: str, obj: Any) -> None:
            attrs = dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                if isinstance(value, np.ndarray):  # NOTE: bytes compare big images fast; vlen strings as lists
                    value = value.tolist() if value.dtype == object else value.tobytes()
                out[name] = (str(obj.dtype), obj.shape, value, attrs)
            else:
                out[name] = ("group", attrs)
        h5.visititems(visit)
        out["/"] = dict(h5.attrs)
    return out
