"""A real receiver process against hostile and unlucky input: bad names, bad batches, floods, crashes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Iterator

import psutil
import pytest
import zmq

from hidra_proc import Hidra, intact, receiver_overrides, tree, wait_until, write_file

pytestmark = pytest.mark.integration

TOPIC = b"tester_1"


class RawSender:
    """A raw PUSH socket to a running receiver, and a SUB socket for its confirmations."""

    def __init__(self, receiver: Hidra) -> None:
        data, confirmations, _status = receiver.endpoints()
        self.ctx = zmq.Context()
        self.push, self.sub = self.ctx.socket(zmq.PUSH), self.ctx.socket(zmq.SUB)
        for s in (self.push, self.sub):
            s.linger = 0
        self.push.sndtimeo = 30_000  # fail instead of hanging if the receiver stops taking data
        self.sub.subscribe(TOPIC)
        self.sub.subscribe(b"hidra.receiver.alive")
        self.sub.connect(confirmations)
        wait_until(lambda: self.sub.poll(100), 10, "the receiver's beacon")  # the subscription is live
        self.push.connect(data)
        self.confirmed: set[bytes] = set()

    def send(self, meta: dict, payload: bytes, *, topic: bool = True) -> None:
        base = {"filesize": len(payload), "chunksize": 1 << 20, "chunk_number": 0, "file_mod_time": time.time(),
                "relative_path": "", "version": "4.4.3"}
        if topic:
            base["confirmation_required"] = TOPIC.decode()
        self.push.send_multipart([json.dumps({**base, **meta}).encode(), payload])

    def confirmed_all(self, names: set[bytes]) -> bool:
        while self.sub.poll(0):
            frames = self.sub.recv_multipart()
            if frames[0] == TOPIC:
                self.confirmed.add(frames[1])
        return names <= self.confirmed

    def close(self) -> None:
        self.push.close()
        self.sub.close()
        self.ctx.term()


@pytest.fixture
def raw(storage_path) -> Iterator[RawSender]:
    sender = RawSender(storage_path.start_receiver())
    try:
        yield sender
    finally:
        sender.close()


def test_lone_surrogate_name_is_refused_and_the_next_file_is_stored_and_confirmed(storage_path, raw):
    raw.send({"filename": "evil\udcff"}, b"evil")  # JSON "evil\udcff": not text in any encoding
    raw.send({"relative_path": "d\udcff", "filename": "x"}, b"evil")
    raw.send({"filename": "topic.dat", "confirmation_required": "t\udcff"}, b"evil")
    raw.send({"filename": "good.dat"}, b"good")
    wait_until(lambda: raw.confirmed_all({b"good.dat"}), 20, "the valid file's confirmation")
    assert tree(storage_path.target) == {"good.dat": 4}
    log = storage_path.receiver.text()
    assert "is not valid UTF-8 text" in log and "path refused" in log
    assert "field 'confirmation_required' 't\\udcff' is not valid UTF-8 text" in log
    assert storage_path.receiver.proc.poll() is None


def test_commit_thread_that_dies_stops_the_receiver_with_non_zero_exit(tmp_path):
    (tmp_path / "target").mkdir()
    boom = ("import sys; import hidra_core.receiver.commit as c\n"
            "def boom(*args): raise RuntimeError('forced death of the commit thread')\n"
            "c.encode_heartbeat = boom\n"
            "from hidra_core.cli.main import main; sys.exit(main(sys.argv[1:]))\n")
    args = ["receiver"] + [a for o in receiver_overrides(tmp_path / "target") for a in ("--set", o)]
    result = subprocess.run([sys.executable, "-c", boom, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "the commit thread died" in result.stderr and "forced death of the commit thread" in result.stderr
    assert "hidra receiver stopped" in result.stderr


def test_batch_with_a_300_byte_name_and_an_eisdir_collision_stores_every_valid_file(storage_path, raw):
    (storage_path.target / "run" / "collide.dat").mkdir(parents=True)  # a directory where a file should go
    valid = {f"f{n:03d}.dat".encode(): f"content {n}".encode() for n in range(200)}
    for n, (name, data) in enumerate(valid.items()):
        raw.send({"relative_path": "run", "filename": name.decode()}, data)
        if n == 50:
            raw.send({"relative_path": "run", "filename": "n" * 300}, b"too long")
        if n == 100:
            raw.send({"relative_path": "run", "filename": "collide.dat"}, b"collides")
    wait_until(lambda: raw.confirmed_all({b"run/" + name for name in valid}), 30, "every valid file confirmed")
    stored = {p.name.encode(): p.read_bytes() for p in (storage_path.target / "run").iterdir() if p.is_file()}
    assert stored == valid
    log = storage_path.receiver.text()
    assert "component of 300 bytes; the file system allows 255" in log
    assert "storing run/collide.dat failed, not confirmed: IsADirectoryError" in log
    assert "none confirmed" not in log


def test_unusable_file_mod_time_leaves_no_temp_files(storage_path, raw):
    names = {f"t{n}.dat": mtime for n, mtime in enumerate([2**80, float("nan"), -1e300])}
    for name, mtime in names.items():
        raw.send({"filename": name, "file_mod_time": mtime}, b"t")
    wait_until(lambda: raw.confirmed_all({name.encode() for name in names}), 20, "the three files")
    assert tree(storage_path.target) == {name: 1 for name in names}
    assert "is not a usable time" in storage_path.receiver.text()


def test_20000_unfinished_first_chunks_neither_exhaust_descriptors_nor_delay_a_real_file(storage_path, raw):
    receiver = psutil.Process(storage_path.receiver.proc.pid)
    for n in range(20_000):  # one byte of a 1,000-byte file each, from one peer without a topic
        raw.send({"filename": f"flood{n}.dat", "filesize": 1000, "chunksize": 1}, b"x", topic=False)
    raw.send({"filename": "marker.dat"}, b"after the flood")  # one socket: arrives after the flood
    wait_until(lambda: raw.confirmed_all({b"marker.dat"}), 60, "the marker file behind the flood")
    assert receiver.num_fds() < 64 + 200, "unfinished files are not bounded"
    storage_path.start_sender()
    write_file(storage_path.source / "real.dat", 5000)
    wait_until(lambda: intact(storage_path.target, "real.dat", 5000), 30, "the real sender's file")
    log = storage_path.receiver.text()
    assert "Too many open files" not in log
    assert "unfinished file dropped, sender '" in log


def test_user_file_named_like_an_old_temp_file_survives_a_receiver_restart(storage_path):
    pair = storage_path
    pair.start_receiver()
    pair.start_sender()
    write_file(pair.source / "scan.0123456789ab.part", 3000)
    wait_until(lambda: intact(pair.target, "scan.0123456789ab.part", 3000), 30, "the user's .part file")
    assert pair.receiver.stop() == 0
    pair.start_receiver()
    write_file(pair.source / "after-restart.dat", 100)
    wait_until(lambda: intact(pair.target, "after-restart.dat", 100), 30, "a file after the restart")
    assert pair.receiver.stop() == 0  # the start-up clean-up has had every chance to run
    assert intact(pair.target, "scan.0123456789ab.part", 3000)


def test_sigkilled_receiver_leaves_no_debris_in_the_target(storage_path, raw):
    for n in range(20):  # first chunks of files that never finish
        raw.send({"relative_path": f"run{n % 3}", "filename": f"big{n}.dat", "filesize": 1 << 20,
                  "chunksize": 1 << 16}, b"x" * (1 << 16))
    raw.send({"filename": "done.dat"}, b"complete")
    wait_until(lambda: raw.confirmed_all({b"done.dat"}), 20, "the complete file")
    storage_path.receiver.proc.send_signal(signal.SIGKILL)
    storage_path.receiver.proc.wait(10)
    assert tree(storage_path.target) == {"done.dat": 8}


def test_receiver_log_has_a_line_per_stored_file_and_a_summary(storage_path):
    pair = storage_path
    pair.start_receiver("receiver.summary_interval_s=1")
    pair.start_sender()
    write_file(pair.source / "logged.dat", 4321)
    wait_until(lambda: intact(pair.target, "logged.dat", 4321), 30, "logged.dat")
    wait_until(lambda: "files/s" in pair.receiver.text(), 10, "a summary line")
    log = pair.receiver.text()
    assert "stored logged.dat: 4321 bytes," in log and " ms" in log
    assert "1 stored" in log


def test_per_file_lines_can_be_turned_down(storage_path):
    quiet = RawSender(storage_path.start_receiver("receiver.log_each_file=false"))
    try:
        quiet.send({"filename": "quiet.dat"}, b"q")
        wait_until(lambda: quiet.confirmed_all({b"quiet.dat"}), 20, "quiet.dat")
    finally:
        quiet.close()
    assert "stored quiet.dat" not in storage_path.receiver.text()


BACK_PRESSURE_CHILD = """
import subprocess, sys, time, zmq
from hidra_core.config import InstanceConfig
from hidra_core.host.plugins import PluginHost
from hidra_core.receiver import loop

config = InstanceConfig.model_validate({"receiver": {
    "target": sys.argv[1], "transports": {"tcp": {"heartbeat_ivl_ms": 100, "heartbeat_timeout_ms": 5000}}}})
receiver = loop.Receiver(config, PluginHost())
data = loop.open_input(receiver.endpoints, zmq.PULL, "tcp://127.0.0.1:0", 2)
endpoint = data.getsockopt_string(zmq.LAST_ENDPOINT)
peer = ("import zmq; c = zmq.Context(); p = c.socket(zmq.PUSH); p.sndhwm = 100000; p.linger = 0;"
        f"p.connect('{endpoint}')\\nfor i in range(3000): p.send(b'x' * 1000)\\nimport time; time.sleep(1)")
subprocess.run([sys.executable, "-c", peer], check=True)  # fills the queue nobody reads, then vanishes
time.sleep(1)  # an observation window of ten heartbeat intervals, not synchronisation
print("survived", flush=True)
data.close(linger=0)
receiver.context.destroy(linger=0)
"""


def test_receiver_socket_survives_a_sender_that_vanishes_during_back_pressure(tmp_path):
    """The libzmq abort seen in a long run: input stopped by back-pressure, the peer gone, a heartbeat fires."""
    result = subprocess.run([sys.executable, "-c", BACK_PRESSURE_CHILD, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert "!_io_error" not in result.stderr
    assert result.returncode == 0 and "survived" in result.stdout, result.stderr
