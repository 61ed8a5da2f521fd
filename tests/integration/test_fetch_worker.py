"""Fetcher I/O runs in the sender's fetch worker: a read that blocks never holds up the router loop, and a
fetcher that raises costs one file, never the sender. The ``trap`` fetcher (tests/data/trap-fetcher) is the
``file`` fetcher with reads that block on a FIFO and calls that raise, chosen by file name."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from hidra_proc import content, intact, scrape, sender_overrides, wait_until, write_file

pytestmark = pytest.mark.integration

TRAP_DIST = Path(__file__).resolve().parents[1] / "data" / "trap-fetcher"


@pytest.fixture
def trap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The trap fetcher visible to the ``hidra`` subprocesses; returns the FIFO its block* reads wait on."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TRAP_DIST), os.environ.get("PYTHONPATH")])))
    fifo = tmp_path / "release.fifo"
    os.mkfifo(fifo)
    return fifo


def _status(endpoint: str, timeout_s: float) -> dict | None:
    """HIDRA_STATUS on the sender's com port, as ``hidra clients`` asks it; None if no answer in time."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", b"test", b"HIDRA_STATUS", b"[]"])
        if not sock.poll(int(timeout_s * 1000)):
            return None
        return json.loads(sock.recv_multipart()[1])
    finally:
        sock.close()


def _reader_waits(fifo: Path) -> int | None:
    """A write end of the FIFO once the fetcher is blocked reading it (opening it then succeeds), else None."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None


def test_com_requests_are_answered_while_a_fetcher_read_blocks(storage_path, trap):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender("sender.fetcher.type=trap", f"sender.fetcher.trap.fifo={trap}")
    com = re.search(r"com (\S+), request", sender.text()).group(1)
    write_file(pair.source / "block.dat", 5000)
    write_fd = wait_until(lambda: _reader_waits(trap), 30, "the fetcher blocked in its read")
    try:
        # NOTE: the read stays blocked until the FIFO is closed below, so any answer shows the loop was free.
        answer = _status(com, timeout_s=20)
        assert answer is not None, "the com port did not answer while the fetcher was blocked"
        assert "targets" in answer
    finally:
        os.close(write_fd)
    wait_until(lambda: intact(pair.target, "block.dat", 5000), 30, "block.dat once the read is released")


def test_a_fetcher_that_raises_costs_one_file_not_the_sender(storage_path, trap):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender("sender.fetcher.type=trap", "sender.storage.remove_source=after_confirmation")
    for name in ("boom-stat.dat", "boom-read.dat", "boom-remove.dat", "flaky.dat", "fine.dat"):
        write_file(pair.source / name, 2000)
    wait_until(lambda: intact(pair.target, "fine.dat", 2000), 30, "fine.dat after the failing files")
    wait_until(lambda: intact(pair.target, "flaky.dat", 2000), 30, "flaky.dat, read again after EIO")
    wait_until(lambda: intact(pair.target, "boom-remove.dat", 2000), 30, "boom-remove.dat stored")
    wait_until(lambda: "could not remove boom-remove.dat: RuntimeError: boom in remove" in sender.text(), 30,
               "the failed removal in the log")
    for line in ("boom-stat.dat: reading it failed: RuntimeError: boom in stat",
                 "boom-read.dat: reading it failed: RuntimeError: boom in read",
                 "flaky.dat: reading it failed (OSError: [Errno 5] flaky disk"):
        assert line in sender.text(), line
    assert (pair.source / "boom-remove.dat").read_bytes() == content("boom-remove.dat", 2000)
    assert not (pair.source / "fine.dat").exists()
    assert sender.proc.poll() is None
    write_file(pair.source / "later.dat", 100)
    wait_until(lambda: intact(pair.target, "later.dat", 100), 30, "a file after all that")
    assert sender.stop() == 0
    assert "'failed': 2" in sender.text()
    args = [a for o in sender_overrides(pair.source, pair.state, pair.data, pair.confirmations)
            for a in ("--set", o)]
    report = subprocess.run([sys.executable, "-m", "hidra_core", "ledger", *args], capture_output=True, text=True,
                            timeout=30, cwd=pair.base)
    assert report.returncode == 0, report.stderr
    for name, reason in (("boom-stat.dat", "RuntimeError: boom in stat"),
                         ("boom-read.dat", "RuntimeError: boom in read")):
        assert re.search(rf"failed .* {re.escape(name)}  \(.*{re.escape(reason)}\)", report.stdout), report.stdout


def test_a_read_that_fails_once_counts_as_a_fetch_retry_in_metrics(storage_path, trap):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender("sender.fetcher.type=trap")
    write_file(pair.source / "fine.dat", 1000)
    wait_until(lambda: intact(pair.target, "fine.dat", 1000), 30, "fine.dat")
    assert scrape(sender.rest_url())["hidra_sender_fetch_retries_total"] == 0
    write_file(pair.source / "flaky.dat", 2000)  # NOTE: its first read fails with EIO, the second succeeds
    wait_until(lambda: intact(pair.target, "flaky.dat", 2000), 30, "flaky.dat, read again after EIO")
    wait_until(lambda: scrape(sender.rest_url())["hidra_sender_fetch_retries_total"] == 1, 10,
               "the retry in /metrics")
    assert scrape(sender.rest_url())["hidra_sender_files_failed_total"] == 0
