"""§10 item 13: our sender with a HiDRA 4.x-style storage receiver (no beacon, per-chunk confirmations
published right after write(), no checksum frame), written here from hidra4-protocol.md §7."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import zmq

from hidra_proc import Hidra, content, sender_overrides, tree, wait_until, write_file

pytestmark = pytest.mark.integration


class LegacyReceiver:
    """PULL data + PUB confirmations, as a 4.x datareceiver: confirms each chunk as soon as it is written."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.ctx = zmq.Context()
        self.pull, self.pub = self.ctx.socket(zmq.PULL), self.ctx.socket(zmq.PUB)
        for s in (self.pull, self.pub):
            s.linger = 0
        self.data = f"tcp://127.0.0.1:{self.pull.bind_to_random_port('tcp://127.0.0.1')}"
        self.confirmations = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.confirmed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        parts: dict[str, bytearray] = {}
        while not self._stop.is_set():
            if not self.pull.poll(50):
                continue
            meta_raw, payload = self.pull.recv_multipart()
            meta = json.loads(meta_raw)
            fid = f"{meta['relative_path']}/{meta['filename']}" if meta["relative_path"] else meta["filename"]
            buf = parts.setdefault(fid, bytearray())
            buf += payload
            size, chunk = meta["filesize"], meta["chunksize"]
            if len(payload) < chunk or (size % chunk == 0 and size // chunk == meta["chunk_number"] + 1):
                (self.target / fid).parent.mkdir(parents=True, exist_ok=True)
                (self.target / fid).write_bytes(parts.pop(fid))
            if meta["confirmation_required"]:
                self.pub.send_multipart([meta["confirmation_required"].encode(), fid.encode(),
                                         str(meta["chunk_number"]).encode()])
                self.confirmed += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pull.close()
        self.pub.close()
        self.ctx.term()


@pytest.mark.parametrize("accept", [False, True])
def test_legacy_confirmations_remove_sources_only_when_accepted(tmp_path, accept):
    source, state, target = tmp_path / "source", tmp_path / "state", tmp_path / "target"
    for d in (source, state, target):
        d.mkdir()
    expected = {f"l/{i}.dat": 70_000 * i + 5 for i in range(5)}  # 1 to 5 chunks of 64 KiB
    for rel, size in expected.items():
        write_file(source / rel, size)
    receiver = LegacyReceiver(target)
    sender = Hidra("sender", tmp_path / "sender.log", [
        *sender_overrides(source, state, receiver.data, receiver.confirmations), "sender.chunksize=65536",
        "sender.storage.remove_source=after_confirmation", f"sender.storage.accept_legacy_confirmations={accept}",
        # PUB/SUB may lose a confirmation: then the file is re-sent, every 5 s (no backoff) within the test's wait
        "sender.storage.confirmation_timeout_s=5", "sender.storage.max_backoff_s=5"])
    try:
        sender.wait_ready()
        wait_until(lambda: all((target / r).exists() and (target / r).read_bytes() == content(Path(r).name, s)
                               for r, s in expected.items()), 30, "all files at the legacy receiver")
        if accept:
            wait_until(lambda: tree(source) == {}, 30, "sources removed after legacy confirmations")
            assert "accept_legacy_confirmations is on" in sender.text()
        else:
            wait_until(lambda: receiver.confirmed >= sum(max(1, -(-s // 65536)) for s in expected.values()), 30,
                       "every chunk confirmed")
            deadline = time.monotonic() + 2.0  # a negative: nothing may be removed in this window
            while time.monotonic() < deadline:
                assert tree(source) == expected
                time.sleep(0.05)
    finally:
        sender.kill()
        receiver.close()
