"""Raw pyzmq in the shape of the Eiger pipeline: what eiger_stream.py compares HiDRA with.

    python _rawforward.py sink COUNT              binds a PULL socket to a free port, prints "ready ENDPOINT",
                                                  receives COUNT multipart messages, prints "result {json}"
    python _rawforward.py forward SOURCE SINK...  PULLs multipart messages from SOURCE (the simulator's stream)
                                                  and PUSHes each, zero-copy, to every SINK, until killed

No decoding, checksums, bookkeeping or writing: the copies and socket work of sim -> sender -> receiver + client.
"""
from __future__ import annotations

import json
import sys
import time

import zmq


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def sink(count: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.rcvhwm = 8
    sock.bind("tcp://127.0.0.1:*")
    print("ready", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    sock.recv_multipart(copy=False)
    first = time.monotonic()
    for _ in range(count - 1):
        sock.recv_multipart(copy=False)
    print("result", json.dumps({"first": first, "last": time.monotonic(), "peak_rss": peak_rss()}), flush=True)
    sock.close(0)
    ctx.term()


def forward(source: str, sinks: list[str]) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = 32
    pull.connect(source)
    pushes = []
    for endpoint in sinks:
        push = ctx.socket(zmq.PUSH)
        push.sndhwm = 4
        push.connect(endpoint)
        pushes.append(push)
    print("ready", flush=True)
    while True:
        parts = pull.recv_multipart(copy=False)
        for push in pushes:
            push.send_multipart(parts, copy=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["sink"] and len(sys.argv) == 3:
        sink(int(sys.argv[2]))
    elif sys.argv[1:2] == ["forward"] and len(sys.argv) >= 4:
        forward(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
