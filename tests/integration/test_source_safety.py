"""The source side of the storage path through real ``hidra`` processes: files still being written, replaced,
symlinked in, or with names and times the sender cannot store, are never lost, never followed and never fatal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hidra_proc import Hidra, content, sender_overrides, tree, wait_until, write_file

pytestmark = pytest.mark.integration

REMOVE = "sender.storage.remove_source=after_confirmation"
_WRITER = r"""
import json, os, sys
f = None
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["do"] == "open":
        f = open(cmd["path"], cmd["mode"])
    elif cmd["do"] == "write":
        f.write(bytes.fromhex(cmd["hex"]))
        f.flush()
    elif cmd["do"] == "close":
        nlink = os.fstat(f.fileno()).st_nlink
        f.close()
        print(json.dumps({"nlink": nlink}), flush=True)
        continue
    print(json.dumps({"ok": True}), flush=True)
"""


class Writer:
    """A separate process that writes a file step by step, as a detector's writer would."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _WRITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def do(self, **cmd: object) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def open(self, path: Path, mode: str) -> None:
        self.do(do="open", path=str(path), mode=mode)

    def write(self, data: bytes) -> None:
        self.do(do="write", hex=data.hex())

    def close(self) -> int:
        """Close the file; the link count it had just before (0: the sender deleted it while open)."""
        return int(self.do(do="close")["nlink"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def writers():
    made: list[Writer] = []

    def make() -> Writer:
        made.append(Writer())
        return made[-1]

    yield make
    for w in made:
        w.stop()


def _stored(pair, rel: str) -> bytes | None:
    try:
        return (pair.target / rel).read_bytes()
    except FileNotFoundError:
        return None


def _holds_somewhere(root: Path, data: bytes) -> bool:
    """Some file below ``root`` has exactly ``data`` (how the receiver names an earlier version is its business)."""
    for p in root.rglob("*"):
        try:
            if p.is_file() and p.stat().st_size == len(data) and p.read_bytes() == data:
                return True
        except FileNotFoundError:
            continue
    return False


def test_file_open_for_writing_at_startup_is_not_sent_half_written(storage_path, writers):
    pair = storage_path
    names = [f"open{i}.raw" for i in range(3)]
    held = []
    for name in names:
        w = writers()
        w.open(pair.source / name, "wb")
        w.write(content(name, 30_000)[:10_000])
        held.append(w)
    pair.start_receiver()
    sender = pair.start_sender(REMOVE)
    for name in names:
        wait_until(lambda: f"{name} is still open for writing" in sender.text(), 30, f"{name} found busy")
    write_file(pair.source / "closed.raw", 500)  # a sentinel: files go out in order, this one is not held back
    wait_until(lambda: _stored(pair, "closed.raw") is not None, 30, "the closed file")
    assert not any((pair.target / name).exists() for name in names)
    for name, w in zip(names, held):
        w.write(content(name, 30_000)[10_000:])
        assert w.close() == 1, f"{name} was deleted while its writer still had it open"
    for name in names:
        wait_until(lambda: not (pair.source / name).exists(), 30, f"{name} removed after its confirmation")
        assert _stored(pair, name) == content(name, 30_000)


def test_slow_writer_in_a_new_directory_is_stored_complete(storage_path, writers):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender(REMOVE)
    # NOTE: the directory arrives with the file already open in it, so the new directory's scan finds it
    # (created inside the tree, the scan races the writer's open).
    (pair.base / "run7").mkdir()
    w = writers()
    w.open(pair.base / "run7" / "slow.raw", "wb")
    w.write(b"first part;")
    os.rename(pair.base / "run7", pair.source / "run7")
    wait_until(lambda: "run7/slow.raw is still open for writing" in sender.text(), 30, "the scan of run7")
    w.write(b"second part")
    assert w.close() == 1
    wait_until(lambda: not (pair.source / "run7" / "slow.raw").exists(), 30, "slow.raw removed")
    assert _stored(pair, "run7/slow.raw") == b"first part;second part"


def _sent_or_held_back(pair, sender: Hidra, rel: str, first: bytes) -> bool:
    """The sender either held the file back as open, or sent ``first`` and then tried to remove it."""
    log = sender.text()
    if f"{rel} is still open for writing" in log:
        return True
    return _stored(pair, rel) == first and (not (pair.source / rel).exists() or f"{rel}: " in log)


@pytest.mark.parametrize("rewrite", ["append-after-close", "truncate-and-rewrite"])
def test_file_reopened_by_its_writer_is_not_removed_while_open(storage_path, writers, rewrite):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender(REMOVE)
    path = pair.source / "again.raw"
    first, second = b"A" * 4000, b"B" * 4000
    w = writers()
    w.open(path, "wb")
    w.write(first)
    assert w.close() == 1
    if rewrite == "append-after-close":
        w.open(path, "ab")
        final = first + second
    else:
        w.open(path, "r+b")  # NOTE: same size, and the mtime below kept: only identity tells the versions apart
        mtime = path.stat().st_mtime_ns
        final = second
    wait_until(lambda: _sent_or_held_back(pair, sender, "again.raw", first), 30, "the first version handled")
    w.write(second)
    if rewrite == "truncate-and-rewrite":
        os.utime(path, ns=(mtime, mtime))
    assert w.close() == 1, "the source was deleted while its writer had it open"
    wait_until(lambda: not path.exists(), 30, "again.raw removed after the final version's confirmation")
    assert _holds_somewhere(pair.target, final)


def test_replacement_with_same_size_and_mtime_is_sent(storage_path):
    """``cp -p`` / ``rsync -t`` put another file under a stored name with the same size and mtime."""
    pair = storage_path
    pair.start_receiver()
    pair.start_sender()
    path = pair.source / "same.bin"
    path.write_bytes(b"1" * 5000)
    wait_until(lambda: _stored(pair, "same.bin") == b"1" * 5000, 30, "the first version")
    mtime = path.stat().st_mtime_ns
    replacement = pair.base / "replacement.tmp"
    replacement.write_bytes(b"2" * 5000)
    os.utime(replacement, ns=(mtime, mtime))
    os.rename(replacement, path)
    wait_until(lambda: _holds_somewhere(pair.target, b"2" * 5000), 30, "the replacement at the target")


def _secret(pair) -> Path:
    secret = pair.base / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"private")
    secret.chmod(0o600)
    return secret


def test_symlinks_are_never_followed_however_they_arrive(storage_path):
    pair = storage_path
    secret = _secret(pair)
    (pair.source / "at-start.txt").symlink_to(secret)
    (pair.source / "hostname").symlink_to("/etc/hostname")
    pair.start_receiver()
    sender = pair.start_sender()
    (pair.base / "link").symlink_to(secret)
    os.rename(pair.base / "link", pair.source / "moved-in.txt")
    (pair.base / "host").symlink_to("/etc/hostname")
    os.rename(pair.base / "host", pair.source / "moved-host")
    write_file(pair.source / "sentinel.dat", 100)
    wait_until(lambda: "sentinel.dat" in tree(pair.target), 30, "the sentinel")
    for name in ("at-start.txt", "hostname", "moved-in.txt", "moved-host"):
        wait_until(lambda: f"skipping symlink {pair.source / name}" in sender.text(), 30, f"why {name} is skipped")
    assert tree(pair.target) == {"sentinel.dat": 100}


def _far_future_ns() -> int:
    return 10_411_000_000 * 10**9  # the year 2300: more nanoseconds than a signed 64-bit integer holds


def test_bad_names_and_far_future_mtimes_never_stop_the_sender(storage_path):
    pair = storage_path
    bad = os.fsencode(pair.source) + b"/bad\xff name.dat"
    with open(bad, "wb") as f:
        f.write(b"kept at the source")
    future = pair.source / "future.dat"
    future.write_bytes(b"from the future")
    os.utime(future, ns=(_far_future_ns(), _far_future_ns()))
    pair.start_receiver()
    sender = pair.start_sender()
    write_file(pair.source / "after.dat", 300)
    wait_until(lambda: "after.dat" in tree(pair.target), 30, "a normal file after the bad ones")
    wait_until(lambda: _stored(pair, "future.dat") == b"from the future", 30, "the far-future file")
    wait_until(lambda: "bad\\xff name.dat" in sender.text(), 30, "the refused name in the log")
    assert sender.proc.poll() is None
    assert os.path.exists(bad)
    assert sender.stop() == 0
    again = pair.start_sender()  # every restart used to crash on the same file
    write_file(pair.source / "later.dat", 400)
    wait_until(lambda: "later.dat" in tree(pair.target), 30, "a file after the restart")
    assert again.proc.poll() is None
    args = [a for o in sender_overrides(pair.source, pair.state, pair.data, pair.confirmations)
            for a in ("--set", o)]
    report = subprocess.run([sys.executable, "-m", "hidra_core", "ledger", *args], capture_output=True, text=True,
                            timeout=30, cwd=pair.base)
    assert report.returncode == 0, report.stderr
    assert "refused" in report.stdout and "bad\\xff name.dat" in report.stdout
    assert "not valid UTF-8" in report.stdout
