"""How many pulses/s ``BsreadSource.poll`` takes in: 4 float64 scalars and one 512 x 512 uint16 image per pulse.

The real bsread ``Sender`` runs in a child process (its own GIL) and sends as fast as it can over TCP loopback;
this process polls the source until every pulse arrived. Two figures per image compression: the end-to-end rate
(bounded by whichever side is slower, usually the Python sender) and the source's own capacity, pulses per CPU
second of this process (poll, decode, event building and ZeroMQ's I/O thread).
Usage: ``.venv/bin/python plugins/hidra-databuffer/benchmarks/bsread_source.py [N]`` (default 3000 pulses).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # NOTE: before bitshuffle is imported (databuffer.md §11)

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import zmq  # noqa: E402

SHAPE = (512, 512)


def send(n: int, compression: str) -> None:
    """The child: bind a real bsread sender, print its endpoint, send ``n`` pulses, wait for the parent."""
    from bsread import PUSH
    from bsread.sender import Sender

    rng = np.random.default_rng(1)
    images = [rng.poisson(8, SHAPE).astype(np.uint16) for _ in range(8)]  # NOTE: detector-like, compressible
    sender = Sender(address="tcp://127.0.0.1", port=0, mode=PUSH, queue_size=50)
    for k in range(4):
        sender.add_channel(f"BENCH:SCALAR{k}", metadata={"type": "float64"})
    sender.add_channel("BENCH:IMAGE", metadata={"type": "uint16", "shape": list(SHAPE[::-1]),
                                                "compression": compression})
    sender.open()
    print(sender.stream.socket.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    for i in range(n):
        sender.send(i * 1.0, i * 2.0, i * 3.0, i * 4.0, images[i % len(images)], check_data=False)
    sys.stdin.read()  # NOTE: stay until the parent has every pulse; closing earlier may drop queued ones
    sender.close()


def measure(n: int, compression: str) -> None:
    from hidra_databuffer.bsread_source import BsreadConfig, BsreadSource

    child = subprocess.Popen([sys.executable, __file__, "--send", str(n), compression], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    ctx = zmq.Context()
    source = BsreadSource(BsreadConfig(address=child.stdout.readline().strip()))
    source.open(ctx)
    got = nbytes = 0
    first = cpu0 = 0.0
    while got < n:
        events = source.poll(1000)
        if events and not got:
            first, cpu0 = time.perf_counter(), time.process_time()
        got += len(events)
        nbytes += sum(e.size or 0 for e in events)
    wall, cpu = time.perf_counter() - first, time.process_time() - cpu0
    child.stdin.close()
    child.wait(30)
    source.close()
    ctx.term()
    assert source.stats["pulses"] == n and source.stats["malformed"] == source.stats["gaps"] == 0, source.stats
    print(f"{compression:>15}: {n} pulses, {nbytes / n / 1024:.0f} KiB/pulse in the payload; end to end "
          f"{(n - 1) / wall:.0f} pulses/s; source capacity {(n - 1) / cpu:.0f} pulses per CPU second")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--send"]:
        send(int(sys.argv[2]), sys.argv[3])
    else:
        count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
        for mode in ("bitshuffle_lz4", "none"):
            measure(count, mode)
