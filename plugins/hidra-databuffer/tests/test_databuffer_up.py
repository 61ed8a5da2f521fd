"""`hidra databuffer up` end to end: the real bsread sender at 100 Hz -> buffer (hidra sender + receiver with the
``databuffer`` writer) -> broker REST start/stop -> a writer -> the HDF5 file holds exactly the delivered pulses
of the range, with the values that were sent."""
from __future__ import annotations

import json
import socket
from typing import Any

import h5py
import numpy as np
import pytest
import requests

from hidra_core.testing import wait_until


from up_proc import get_json  # noqa: E402

pytest_plugins = ["up_proc"]  # NOTE: its fixture: up
pytestmark = pytest.mark.slow


def test_a_pulse_range_of_a_100_hz_stream_is_written_exactly_as_delivered(up: dict[str, Any]) -> None:
    base, stream = up["base"], up["stream"]

    def ready() -> Any:
        assert up["proc"].poll() is None, up["log"].read_text()[-3000:]
        status = get_json(up["query"] + "/status")
        return get_json(up["rest"] + "/status") and status and status.get("newest_pulse_id")

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
    wait_until(lambda: get_json(up["query"] + "/status"), 60, what="the buffer's query API")
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
