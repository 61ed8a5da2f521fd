"""The receiver's disk fills up (its target is a small tmpfs): storing fails with a clear error that the receiver
logs and shows on its REST API, the sender keeps every source file whose copy is not durable, and once space is
freed everything arrives, with no process restarted.

Needs ``mount -t tmpfs`` (root); skipped with the reason where that is not permitted.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from chaos.harness import Pair, RemovalWatch
from integration.hidra_proc import intact, no_part_files, tree, wait_until, write_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TMPFS = 2 * 2**20
FREE = 96 * 1024  # left free beside the filler: a few files fit, most do not
CHUNK = 16 * 1024
EXPECTED = {f"run/f{i:03d}.raw": 40_000 + i for i in range(30)}  # 3 chunks each, 1.2 MB in all


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "target"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS},mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the receiver's target: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)  # NOTE: a process still in it: detach


def _fill(mount: Path) -> Path:
    """A filler file that leaves only ``FREE`` bytes of the tmpfs."""
    filler = mount / "filler"
    st = os.statvfs(mount)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - FREE))
    return filler


def _statistics(url: str) -> dict[str, Any]:
    return dict(requests.get(f"{url}/statistics", timeout=5).json())


def test_full_target_reports_errors_keeps_sources_and_everything_arrives_once_space_is_freed(
        tmp_path: Path, small_disk: Path) -> None:
    filler = _fill(small_disk)
    # NOTE: a failed file is not confirmed; a short confirmation timeout makes the sender try again soon.
    pair = Pair(tmp_path, ["run"], ["sender.storage.remove_source=after_confirmation", f"sender.chunksize={CHUNK}",
                                    "sender.storage.confirmation_timeout_s=1", "sender.storage.max_backoff_s=2"],
                target=small_disk)
    try:
        watch = RemovalWatch(pair.source, pair.target, ["run"], EXPECTED)
        try:
            for rel, size in EXPECTED.items():
                write_file(pair.source / rel, size)
            receiver_url = pair.receiver.rest_url()
            wait_until(lambda: "No space left on device" in pair.receiver.text(), 30, "the receiver's ENOSPC error")
            wait_until(lambda: _statistics(receiver_url)["counters"]["failed"] > 0, 10, "failures counted on REST")
            assert re.search(r"writing run/f\d+\.raw failed, not confirmed: OSError: \[Errno 28\]",
                             pair.receiver.text()), "the error names the file"
            errors = requests.get(f"{receiver_url}/status", timeout=5).json()["errors"]
            assert any("No space left on device" in line["message"] for line in errors), errors
            wait_until(lambda: "not confirmed by the storage receiver in time" in pair.sender.text(), 30,
                       "the sender's retry warning")
            kept = [rel for rel in EXPECTED if (pair.source / rel).exists()]
            assert len(kept) > len(EXPECTED) // 2, "most files cannot fit, so most sources must still be there"

            filler.unlink()
            wait_until(lambda: len(watch.removed) == len(EXPECTED), 30, "every file stored and its source removed")
        finally:
            watch.close()
        watch.check()
        assert all(intact(pair.target, rel, size) for rel, size in EXPECTED.items())
        assert tree(pair.target) == EXPECTED
        assert no_part_files(pair.target)
        # NOTE: the later chunks of a file that could not be written are not "malformed"; they go unreported.
        assert _statistics(receiver_url)["counters"]["malformed"] == 0
        assert "malformed" not in pair.receiver.text()
        for proc in (pair.receiver, pair.sender):
            assert proc.proc.poll() is None and proc.text().count(" ready") == 1, f"{proc.role} restarted"
        assert pair.sender.stop() == 0 and pair.receiver.stop() == 0
    finally:
        pair.close()
