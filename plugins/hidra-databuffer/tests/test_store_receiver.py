"""The ``databuffer`` writer inside a real ``hidra receiver`` process: pulse messages over ZeroMQ (one of them in
several chunks) are confirmed once stored, a query over HTTP returns them, and SIGTERM stops the query API."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import pytest
import requests
import zmq
from test_store_query import make_pulse

from hidra_core.testing import wait_until

pytestmark = pytest.mark.integration

TOPIC = b"databuffer_test"
_ENDPOINTS = r"data (\S+), confirmations (\S+),"
_QUERY_URL = r"databuffer query API ready: (http://\S+/query)"


class Running(NamedTuple):
    proc: subprocess.Popen[bytes]
    log: Path
    data: str
    confirmations: str
    url: str


def _log(path: Path) -> str:
    return path.read_text(errors="replace")


def _send(push: zmq.Socket, meta: dict[str, Any], payload: bytes, chunksize: int) -> None:
    chunks = [payload[i:i + chunksize] for i in range(0, len(payload), chunksize)] or [b""]
    for number, chunk in enumerate(chunks):
        head = {"htype": "hidra-pulse-1.0", "filename": f"pulse_{meta['pulse_id']}", "relative_path": "",
                "filesize": len(payload), "chunksize": chunksize, "chunk_number": number, "chunk_count": len(chunks),
                "last_chunk": number == len(chunks) - 1, "file_mod_time": time.time(), "metadata": meta,
                "confirmation_required": TOPIC.decode()}
        push.send_multipart([json.dumps(head).encode(), chunk])


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    """A ready ``hidra receiver`` with the databuffer writer on free ports."""
    with running_receiver(tmp_path) as running:
        yield running


@contextmanager
def running_receiver(tmp_path: Path, *extra: str) -> Iterator[Running]:
    """A ready ``hidra receiver`` with the databuffer writer on free ports (``extra``: more ``--set`` values)."""
    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    log = tmp_path / "receiver.log"
    sets = [f"receiver.target={target}", "receiver.data=tcp://127.0.0.1:0", "receiver.confirmations=tcp://127.0.0.1:0",
            "receiver.status=tcp://127.0.0.1:0", 'receiver.writers=["databuffer"]',
            "receiver.databuffer.http_port=0", "receiver.databuffer.query_wait_s=0",
            "receiver.rest.address=127.0.0.1:0", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hidra_core", "receiver",
                                 *(arg for s in sets for arg in ("--set", s))], stdout=out, stderr=subprocess.STDOUT)
    try:
        def ready() -> Any:
            assert proc.poll() is None, _log(log)
            return re.search(_ENDPOINTS, _log(log)) and re.search(_QUERY_URL, _log(log))

        wait_until(ready, 60, what="the receiver's and the query API's ready lines")
        data, confirmations = re.search(_ENDPOINTS, _log(log)).groups()  # type: ignore[union-attr]
        url = re.search(_QUERY_URL, _log(log)).group(1)  # type: ignore[union-attr]
        yield Running(proc, log, data, confirmations, url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_pulses_through_a_receiver_process_are_confirmed_and_served(receiver: Running) -> None:
    ctx = zmq.Context()
    push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    try:
        for s in (push, sub):
            s.linger = 0
        sub.subscribe(TOPIC)
        sub.connect(receiver.confirmations)
        push.connect(receiver.data)
        image = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)
        pids = [10, 11, 12, 15]
        for pid in pids:
            meta, payload = make_pulse(pid, {"S:A": ("float64", [1], pid / 4),
                                             "CAM": ("uint16", [512, 512], image if pid == 12 else None)})
            _send(push, meta, payload, chunksize=200_000)
        wait_confirmed(sub, pids)
        body = {"channels": [{"name": "S:A", "backend": "sf-databuffer"}, {"name": "CAM", "backend": "sf-imagebuffer"}],
                "range": {"startPulseId": 0, "endPulseId": 20}}
        scalar, camera = requests.post(receiver.url, json=body, timeout=60).json()
        assert [(e["pulseId"], e["value"]) for e in scalar["data"]] == [(pid, pid / 4) for pid in pids]
        assert [e["pulseId"] for e in camera["data"]] == [12]
        assert camera["data"][0]["value"] == image.ravel().tolist()
        receiver.proc.send_signal(signal.SIGTERM)
        assert receiver.proc.wait(60) == 0, _log(receiver.log)
        with pytest.raises(requests.ConnectionError):
            requests.get(receiver.url.replace("/query", "/status"), timeout=5)
    finally:
        push.close()
        sub.close()
        ctx.term()


def wait_confirmed(sub: zmq.Socket[bytes], pids: list[int]) -> None:
    """Until the receiver confirmed every pulse of ``pids`` on ``sub``."""
    confirmed: set[bytes] = set()

    def all_confirmed() -> bool:
        while sub.poll(100):
            confirmed.add(sub.recv_multipart()[1])
        return confirmed >= {f"pulse_{pid}".encode() for pid in pids}

    wait_until(all_confirmed, 60, what="the confirmations of every pulse", interval_s=0)
