"""Bad input gets a clear error and loses nothing: start-up errors, and hostile messages to the receiver."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import zmq

from hidra_proc import tree, wait_until

pytestmark = pytest.mark.integration


def _hidra(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hidra_core", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


@pytest.fixture
def held_port():
    """A port bound by the test: a process that tried to bind it would fail with 'Address already in use'."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.mark.parametrize("role, overrides, names", [
    ("sender", ["sender.source.type=nosuchsource"], ["event source driver 'nosuchsource'", "inotify"]),
    ("sender", ["sender.fetcher.type=nosuchfetcher"], ["fetcher driver 'nosuchfetcher'"]),
    ("receiver", ["receiver.writers=[nosuchwriter]"], ["writer driver 'nosuchwriter'"]),
    ("sender", ["sender.storage.data=udp://127.0.0.1:1"], ["transport driver 'udp'"]),
])
def test_unknown_driver_stops_start_up_before_any_socket_is_bound(tmp_path, held_port, role, overrides, names):
    (tmp_path / "hidra-data" / "source").mkdir(parents=True)
    (tmp_path / "hidra-data" / "target").mkdir(parents=True)
    # The data port is taken: a process that got as far as binding would fail with "Address already in use".
    args = ["--set", f"receiver.data=tcp://127.0.0.1:{held_port}"]
    for o in overrides:
        args += ["--set", o]
    result = _hidra(role, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    for text in names:
        assert text in result.stderr
    assert "Address already in use" not in result.stderr
    assert "ready" not in result.stderr


@pytest.mark.parametrize("override, names", [
    ("sender.bogus=1", ["--set sender.bogus=1", "sender.bogus", "unknown key"]),
    ("sender.storage.remove_source=sometimes", ["sender.storage.remove_source", "sometimes"]),
    ("sender.chunksize=abc", ["sender.chunksize", "'abc'"]),
    ("sender.source.inotify.bogus=1", ["sender.source.inotify.bogus", "unknown key"]),
    ("receiver.files.fsync=maybe", ["receiver.files.fsync", "maybe"]),
])
def test_invalid_config_names_the_key(tmp_path, override, names):
    (tmp_path / "hidra-data" / "source").mkdir(parents=True)
    (tmp_path / "hidra-data" / "target").mkdir(parents=True)
    role = "receiver" if override.startswith("receiver") else "sender"
    result = _hidra(role, "--set", override, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    for text in names:
        assert text in result.stderr


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "beamline.yaml"
    path.write_text("sender:\n  storage:\n    remove_sourse: after_confirmation\n")
    result = _hidra("config", "check", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "sender.storage.remove_sourse: unknown key" in result.stderr


HOSTILE = [
    ({"relative_path": "../../escaped", "filename": "x"}, "relative_path '../../escaped'"),
    ({"relative_path": "/etc", "filename": "x"}, "absolute"),
    ({"relative_path": "", "filename": "a/b"}, "not a single path component"),
    ({"relative_path": "ok", "filename": ".."}, "'..'"),
    ({"relative_path": "a\x00b", "filename": "x"}, "forbidden characters"),
    ({"relative_path": "a\\..\\..", "filename": "x"}, "forbidden characters"),
]


def _message(meta: dict, payload: bytes) -> list[bytes]:
    base = {"filesize": len(payload), "chunksize": 1 << 20, "chunk_number": 0, "file_mod_time": time.time(),
            "confirmation_required": "tester_1", "version": "4.4.3"}
    return [json.dumps({**base, **meta}).encode(), payload]


def _status(req: zmq.Socket) -> list[bytes]:
    req.send(b"STATUS_CHECK")
    assert req.poll(5000), "no reply to STATUS_CHECK"
    return req.recv_multipart()


def intact_bytes(path, data: bytes) -> bool:
    return path.exists() and path.read_bytes() == data


def test_hostile_paths_are_refused_and_the_receiver_keeps_running(storage_path):
    pair = storage_path
    receiver = pair.start_receiver()
    data, confirmations, status = receiver.endpoints()
    ctx = zmq.Context()
    push, sub, req = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB), ctx.socket(zmq.REQ)
    try:
        for s in (push, sub, req):
            s.linger = 0
        sub.subscribe(b"tester_1")
        sub.subscribe(b"hidra.receiver.alive")
        sub.connect(confirmations)
        wait_until(lambda: sub.poll(100), 10, "the receiver's beacon")  # the subscription is live
        push.connect(data)
        for meta, _why in HOSTILE:
            push.send_multipart(_message(meta, b"evil"))
        push.send_multipart(_message({"relative_path": "fine/dir", "filename": "good.dat"}, b"good"))

        confirmed: list[list[bytes]] = []

        def got_confirmation() -> bool:
            while sub.poll(0):
                frames = sub.recv_multipart()
                if frames[0] == b"tester_1":
                    confirmed.append(frames)
            return bool(confirmed)

        wait_until(got_confirmation, 20, "the valid file's confirmation")
        assert [f[1] for f in confirmed] == [b"fine/dir/good.dat"]
        assert (pair.target / "fine" / "dir" / "good.dat").read_bytes() == b"good"
        assert tree(pair.target) == {"fine/dir/good.dat": 4}
        for name in ("escaped", "x"):
            assert not (pair.base / name).exists() and not (pair.base.parent / name).exists()
        log = receiver.text()
        for _meta, why in HOSTILE:
            assert why in log
        req.connect(status)
        assert _status(req)[:1] == [b"ERROR"] and _status(req)[2] == b"PathRefused"
        req.send(b"RESET_STATUS")
        assert req.poll(5000) and req.recv_multipart() == [b"OK"]
        assert _status(req) == [b"OK"]

        # Malformed messages: dropped, reported, and the next good file still arrives.
        push.send_multipart([b"not json", b"x"])
        push.send_multipart([b"{}", b"x", b"three frames"])
        push.send_multipart(_message({"relative_path": "", "filename": "after.dat"}, b"after"))
        wait_until(lambda: intact_bytes(pair.target / "after.dat", b"after"), 20, "after.dat")
        log = receiver.text()
        assert "metadata frame is not JSON" in log and "2 frames, got 3" in log
        assert _status(req)[2] == b"ProtocolError"
        assert receiver.proc.poll() is None
    finally:
        for s in (push, sub, req):
            s.close()
        ctx.term()
