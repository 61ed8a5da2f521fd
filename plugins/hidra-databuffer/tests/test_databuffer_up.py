"""`hidra databuffer up` end to end: the real bsread sender at 100 Hz -> buffer (hidra sender + receiver with the
``databuffer`` writer) -> broker REST start/stop -> a writer -> the HDF5 file holds exactly the delivered pulses
of the range, with the values that were sent."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import pytest
import requests

from hidra_core.testing import wait_until

pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
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
    stream_port, rest, output, query, *hidra = _free_ports(10)
    stream = Stream(stream_port)
    stream.start()
    keys = ("receiver.data", "sender.storage.data", "receiver.confirmations", "sender.storage.confirmations",
            "receiver.status", "sender.clients.com", "sender.clients.request")
    ports = dict(zip(keys, (hidra[0], hidra[0], hidra[1], hidra[1], hidra[2], hidra[3], hidra[4])))
    sets = [f"{k}=tcp://127.0.0.1:{p}" for k, p in ports.items()]
    sets += [f"receiver.target={tmp_path / 'buffer'}", f"sender.ledger.path={tmp_path / 'ledger.sqlite'}",
             "sender.rest.address=127.0.0.1:0", "receiver.rest.address=127.0.0.1:0"]
    channels = tmp_path / "channels.txt"
    channels.write_text("# test channels\nT:SCALAR\nT:STR\nT:WAVE\nT:IMG\n")
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hidra_core", "databuffer", "up", "--source",
                             f"tcp://127.0.0.1:{stream_port}", "--query-port", str(query), "--rest_port", str(rest),
                             "--output_port", str(output), "-c", str(channels), "--audit_file",
                             str(tmp_path / "audit.log"), *(a for s in sets for a in ("--set", s))],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield {"proc": proc, "rest": f"http://127.0.0.1:{rest}", "query": f"http://127.0.0.1:{query}",
               "stream": stream, "log": tmp_path / "up.log", "base": tmp_path, "sets": sets}
    finally:
        stream.stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        stream.join(10)


def _get(url: str) -> Any:
    try:
        return requests.get(url, timeout=5).json()
    except (requests.ConnectionError, ValueError):
        return None


def test_a_pulse_range_of_a_100_hz_stream_is_written_exactly_as_delivered(up: dict[str, Any]) -> None:
    base, stream = up["base"], up["stream"]

    def ready() -> Any:
        assert up["proc"].poll() is None, up["log"].read_text()[-3000:]
        status = _get(up["query"] + "/status")
        return _get(up["rest"] + "/status") and status and status.get("newest_pulse_id")

    wait_until(ready, 60, what="the broker and a buffered pulse")
    output = base / "out" / "run1.h5"
    params = {"general/created": "test", "general/user": "tester", "general/process": "pytest",
              "general/instrument": "hidra", "output_file": str(output)}
    reply = requests.post(up["rest"] + "/parameters", json=params, timeout=5).json()
    assert reply["status"] == "configured", reply
    first = max(stream.sent) + 1
    assert requests.put(f"{up['rest']}/start_pulse_id/{first}", timeout=5).text == ""
    wait_until(lambda: max(stream.sent) >= first + 60, 30, what="60 more pulses sent")
    last = first + 50
    assert requests.put(f"{up['rest']}/stop_pulse_id/{last}", timeout=5).text == ""
    wait_until(output.exists, 60, what="the HDF5 file")
    delivered = sorted(p for p in stream.sent if first <= p <= last)
    with h5py.File(output, "r") as f:
        assert f["/general/user"][()] == b"tester"
        assert list(f["/data/T:SCALAR/pulse_id"][:]) == delivered  # gaps stay gaps, nothing invented
        np.testing.assert_array_equal(f["/data/T:SCALAR/data"][:, 0], [stream.sent[p]["T:SCALAR"] for p in delivered])
        waves = [p for p in delivered if stream.sent[p]["T:WAVE"] is not None]
        assert list(f["/data/T:WAVE/pulse_id"][:]) == waves
        np.testing.assert_array_equal(f["/data/T:WAVE/data"][:], [stream.sent[p]["T:WAVE"] for p in waves])
        assert f["/data/T:IMG/data"].shape == (len(delivered), 512, 512)
        np.testing.assert_array_equal(f["/data/T:IMG/data"][-1], stream.sent[delivered[-1]]["T:IMG"])
        assert [s.decode() if isinstance(s, bytes) else s for s in f["/data/T:STR/data"][:, 0]] == [
            stream.sent[p]["T:STR"] for p in delivered]
    audit = (base / "audit.log").read_text().splitlines()
    assert len(audit) == 1 and json.loads(json.loads(audit[0][18:])["parameters"])["output_file"] == str(output)


def test_an_analysis_client_sees_the_pulses_while_they_are_buffered(up: dict[str, Any]) -> None:
    """The buffer's sender is an ordinary HiDRA sender: a STREAM client registered on its com port gets each pulse
    as one message with its metadata, and can decode the values with the plugin's own decoder."""
    import zmq

    from hidra_databuffer.values import decode_pulse

    com = next(a.split("=tcp://")[1] for a in up["sets"] if a.startswith("sender.clients.com="))
    wait_until(lambda: _get(up["query"] + "/status"), 60, what="the buffer's query API")
    ctx = zmq.Context()
    client, req = ctx.socket(zmq.PULL), ctx.socket(zmq.REQ)
    try:
        client.linger = req.linger = 0
        port = client.bind_to_random_port("tcp://0.0.0.0")
        req.connect(f"tcp://{com}")
        req.send_multipart([b"4.4.3", b"monitor", b"START_STREAM",
                            json.dumps([[f"{socket.getfqdn()}:{port}", 1, ".*"]]).encode()])
        assert req.poll(10_000) and req.recv_multipart() == [b"START_STREAM"]
        assert client.poll(30_000), "the monitor got no pulse"
        head, payload = client.recv_multipart()
        meta = json.loads(head)
        assert meta["htype"] == "hidra-pulse-1.0" and meta["filename"].startswith("pulse_")
        pulse = meta["metadata"]["pulse_id"]
        values = decode_pulse(meta["metadata"], payload)
        sent = up["stream"].sent[pulse]
        assert values["T:SCALAR"] == sent["T:SCALAR"] and values["T:STR"] == sent["T:STR"]
        np.testing.assert_array_equal(values["T:IMG"], sent["T:IMG"])
    finally:
        client.close()
        req.close()
        ctx.term()
