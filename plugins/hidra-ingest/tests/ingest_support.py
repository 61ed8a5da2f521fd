"""Helpers of the ingest end-to-end tests: producer processes (run this file) and a receiver + sender rig.

    python ingest_support.py files ENDPOINT PREFIX COUNT SIZE [TIMEOUT_S]
        sends COUNT files PREFIX/fNNNN.bin (every third in pieces), prints "done COUNT", or, when a send or an
        acknowledgement times out, "blocked ACKNOWLEDGED" and exits 3
    python ingest_support.py hang ENDPOINT PREFIX
        opens PREFIX/partial.bin, writes part of it, prints "mid-file" and waits to be killed
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from hidra_core import Ingest, IngestError

HERE = Path(__file__).resolve().parent


def content(name: str, size: int) -> bytes:
    """Deterministic bytes for a file name."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def size_of(index: int, size: int) -> int:
    return size + (index % 7) * 13


def name_of(prefix: str, index: int) -> str:
    return f"{prefix}/f{index:04d}.bin"


def _files(endpoint: str, prefix: str, count: int, size: int, timeout_s: float | None) -> int:
    producer = Ingest(endpoint, producer=prefix, timeout_s=timeout_s)
    try:
        for i in range(count):
            name = name_of(prefix, i)
            data = content(name, size_of(i, size))
            if i % 3:
                producer.send_file(name, data)
                continue
            producer.create_file(name)
            third = len(data) // 3 + 1
            for start in range(0, len(data), third):
                producer.write(data[start:start + third])
            producer.close_file()
        producer.close()
    except IngestError as exc:
        print("blocked", producer.acknowledged, exc, flush=True)
        return 3
    print("done", count, flush=True)
    return 0


def _hang(endpoint: str, prefix: str) -> int:
    producer = Ingest(endpoint, producer=prefix)
    producer.send_file(f"{prefix}/before.bin", b"complete", wait=True)
    producer.create_file(f"{prefix}/partial.bin")
    producer.write(content("partial", 100_000))
    print("mid-file", flush=True)
    sys.stdin.read()  # NOTE: until the test kills this process
    return 0


def producer(endpoint: str, *args: object) -> subprocess.Popen[str]:
    """A producer process (see the module docstring for ``args``)."""
    mode, *rest = (str(a) for a in args)
    return subprocess.Popen([sys.executable, str(Path(__file__)), mode, endpoint, *rest], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def listening(sender_log: str) -> str:
    found = re.search(r"zmq_ingest: listening on (\S+)", sender_log)
    assert found, sender_log
    return found.group(1)


if __name__ == "__main__":
    mode, endpoint, prefix, *more = sys.argv[1:]
    if mode == "files":
        timeout = float(more[2]) if len(more) > 2 else None
        sys.exit(_files(endpoint, prefix, int(more[0]), int(more[1]), timeout))
    sys.exit(_hang(endpoint, prefix))
