"""Files whose storage is never confirmed are kept at the source and reported, never removed."""
from __future__ import annotations

import subprocess
import sys

import pytest
import zmq

from hidra_core.protocol.confirmation import encode_heartbeat
from hidra_proc import Hidra, sender_overrides, tree, wait_until, write_file

pytestmark = pytest.mark.integration


def test_never_confirmed_files_are_kept_and_listed(tmp_path):
    """A 'receiver' that swallows data and beacons but never confirms (a storage that keeps failing)."""
    source, state = tmp_path / "source", tmp_path / "state"
    source.mkdir()
    state.mkdir()
    ctx = zmq.Context()
    pull, pub = ctx.socket(zmq.PULL), ctx.socket(zmq.PUB)
    sender = None
    try:
        for s in (pull, pub):
            s.linger = 0
        data = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
        conf = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
        expected = {f"keep/{i}.dat": 1000 + i for i in range(5)}
        for rel, size in expected.items():
            write_file(source / rel, size)
        overrides = [*sender_overrides(source, state, data, conf), "sender.storage.remove_source=after_confirmation",
                     "sender.storage.confirmation_timeout_s=0.3", "sender.storage.max_attempts=2"]
        sender = Hidra("sender", tmp_path / "sender.log", overrides)
        sender.wait_ready()
        received: list[bytes] = []

        def all_given_up() -> bool:
            pub.send_multipart(encode_heartbeat("fake-receiver", {}))
            while pull.poll(0):
                received.append(pull.recv_multipart()[0])
            return sender.text().count("not confirmed after 2 attempts") == len(expected)

        wait_until(all_given_up, 60, "the sender to give up on every file", interval=0.1)
        assert len(received) == 2 * len(expected)  # every file was sent exactly max_attempts times
        assert tree(source) == expected  # nothing removed
        args = [a for o in overrides for a in ("--set", o)]
        report = subprocess.run([sys.executable, "-m", "hidra_core", "ledger", *args],
                                capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert report.returncode == 0, report.stderr
        assert f"{len(expected)} unconfirmed" in report.stdout
        for rel in expected:
            assert rel in report.stdout
        assert sender.stop() == 0
    finally:
        if sender is not None:
            sender.kill()
        pull.close()
        pub.close()
        ctx.term()
