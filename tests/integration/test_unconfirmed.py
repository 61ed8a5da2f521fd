"""Files whose storage is never confirmed are kept at the source, reported, and sent again: never given up."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import zmq

from hidra_core.protocol.confirmation import encode_heartbeat
from hidra_proc import Hidra, sender_overrides, tree, wait_until, write_file

pytestmark = pytest.mark.integration


def test_never_confirmed_files_are_kept_reported_and_still_retried(tmp_path):
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
                     "sender.storage.confirmation_timeout_s=0.3", "sender.storage.max_attempts=2",
                     "sender.storage.max_backoff_s=1", "sender.drain_timeout_s=1"]
        sender = Hidra("sender", tmp_path / "sender.log", overrides)
        sender.wait_ready()
        received: Counter[str] = Counter()

        def receive(beacon: bool) -> None:
            if beacon:
                pub.send_multipart(encode_heartbeat("fake-receiver", {}))
            while pull.poll(0):
                received[json.loads(pull.recv_multipart()[0])["filename"]] += 1

        def sent_more_than_max_attempts() -> bool:
            receive(beacon=True)
            return all(received[rel.split("/")[1]] > 2 for rel in expected)

        wait_until(sent_more_than_max_attempts, 60, "every file sent again after max_attempts", interval=0.1)
        wait_until(lambda: receive(beacon=True) or "reported unconfirmed" in sender.text(), 30, "the retry warning",
                   interval=0.1)
        # Beacons stop: the files wait for the receiver in state unconfirmed, listed by `hidra ledger`.
        wait_until(lambda: receive(beacon=False) or "lost (no beacon" in sender.text(), 30, "the receiver missed")
        args = [a for o in overrides for a in ("--set", o)]

        def ledger_report() -> str | None:
            report = subprocess.run([sys.executable, "-m", "hidra_core", "ledger", *args],
                                    capture_output=True, text=True, timeout=30, cwd=tmp_path)
            assert report.returncode == 0, report.stderr
            return report.stdout if f"{len(expected)} unconfirmed" in report.stdout else None

        report = str(wait_until(ledger_report, 30, "every file unconfirmed in the ledger", interval=0.2))
        for rel in expected:
            assert rel in report
        assert tree(source) == expected  # nothing removed
        before = sum(received.values())
        wait_until(lambda: receive(beacon=True) or sum(received.values()) >= before + len(expected), 30,
                   "the unconfirmed files sent again once the receiver is back", interval=0.1)
        assert sender.stop() == 0
        assert tree(source) == expected
    finally:
        if sender is not None:
            sender.kill()
        pull.close()
        pub.close()
        ctx.term()
