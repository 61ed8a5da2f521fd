"""Raw pyzmq PUSH/PULL over tcp://127.0.0.1: the transport limit that storage_path.py compares HiDRA with.

    python _rawzmq.py pull SIZE COUNT      binds a PULL socket to a free port, prints "ready ENDPOINT",
                                           receives COUNT messages, prints "result {json}" and exits
    python _rawzmq.py push ENDPOINT SIZE COUNT [--on-signal]
                                           sends COUNT messages of SIZE bytes (zero-copy from 64 KiB up,
                                           like the HiDRA sender), prints "result {json}" and exits;
                                           --on-signal: connects, prints "ready" and waits for SIGUSR1 before
                                           it sends (so that several pairs start together)

With HIDRA_BENCH_CURVE=DIR in the environment both ends speak CURVE with the key pairs DIR/receiver and
DIR/sender (from `hidra keys generate`), the baseline of `storage_path.py --curve`.

High-water marks are HiDRA's defaults (sender.storage.hwm=4, receiver.hwm=16), so the figure is what the
same sockets can do without any HiDRA work (file reads, checksums, metadata, writes, ledger).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import zmq

ZERO_COPY_MIN = 64 * 1024
SEND_HWM, RECV_HWM = 4, 16


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def curve(sock: zmq.Socket, server: bool) -> None:
    """CURVE on ``sock`` when HIDRA_BENCH_CURVE names a keys directory (no ZAP handler: any client key)."""
    keys = os.environ.get("HIDRA_BENCH_CURVE")
    if not keys:
        return
    import zmq.auth

    server_public, server_secret = zmq.auth.load_certificate(os.path.join(keys, "receiver.key_secret"))
    if server:
        sock.curve_secretkey, sock.curve_server = server_secret, True
        return
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(os.path.join(keys, "sender.key_secret"))
    sock.curve_serverkey = server_public


def pull(size: int, count: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    curve(sock, server=True)
    sock.rcvhwm = RECV_HWM
    sock.bind("tcp://127.0.0.1:*")
    print("ready", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    copy = size < ZERO_COPY_MIN
    sock.recv(copy=copy)
    first = time.monotonic()
    received = size
    for _ in range(count - 1):
        msg = sock.recv(copy=copy)
        received += len(msg)
    last = time.monotonic()
    print("result", json.dumps({"first": first, "last": last, "bytes": received, "peak_rss": peak_rss()}),
          flush=True)
    sock.close(0)
    ctx.term()


def push(endpoint: str, size: int, count: int, on_signal: bool = False) -> None:
    if on_signal:  # NOTE: blocked before "ready" is printed, so a SIGUSR1 sent after it is never lost
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    curve(sock, server=False)
    sock.sndhwm = SEND_HWM
    sock.linger = -1
    sock.connect(endpoint)
    payload = os.urandom(size)
    copy = size < ZERO_COPY_MIN
    if on_signal:
        print("ready", flush=True)
        signal.sigwait({signal.SIGUSR1})
    start = time.monotonic()
    for _ in range(count):
        sock.send(payload, copy=copy)
    sock.close()  # linger -1: returns once everything is handed to the peer
    ctx.term()
    print("result", json.dumps({"start": start, "peak_rss": peak_rss()}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["pull"] and len(sys.argv) == 4:
        pull(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["push"] and len(sys.argv) in (5, 6) and sys.argv[5:] in ([], ["--on-signal"]):
        push(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), on_signal=len(sys.argv) == 6)
    else:
        sys.exit(__doc__)
