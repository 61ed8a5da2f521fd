"""A minimal analysis worker for end-to-end tests, run as its own process so tests can SIGSTOP/SIGKILL it.

It binds a PULL data socket, prints ``READY <port>``, optionally registers itself (or lets the test register
a whole set), reassembles files by ``last_chunk`` and writes each one to ``--out``. In query mode it keeps
``--outstanding`` NEXT requests open. Raw pyzmq on purpose: it exercises the sender, not our client library.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys

import zmq


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--com", required=True)
    p.add_argument("--request")
    p.add_argument("--mode", choices=["stream", "query"], default="stream")
    p.add_argument("--register", action="store_true", help="register itself (else the test registers the set)")
    p.add_argument("--appid", default=str(os.getpid()))
    p.add_argument("--out", required=True)
    p.add_argument("--outstanding", type=int, default=2)
    args = p.parse_args()
    ctx = zmq.Context()
    data = ctx.socket(zmq.PULL)
    data.linger = 0
    port = data.bind_to_random_port("tcp://127.0.0.1")
    socket_id = f"{socket.getfqdn()}:{port}"
    signal_name = "START_QUERY_NEXT" if args.mode == "query" else "START_STREAM"
    if args.register:
        com = ctx.socket(zmq.REQ)
        com.linger = 0
        com.connect(args.com)
        com.send_multipart([b"4.4.3", args.appid.encode(), signal_name.encode(),
                            json.dumps([[socket_id, 1, ".*"]]).encode()])
        assert com.poll(5000) and com.recv_multipart()[0] == signal_name.encode()
        com.close()
    print(f"READY {port}", flush=True)
    request = None
    if args.mode == "query":
        if not args.register:
            sys.stdin.readline()  # the test registers the set, then says go
        request = ctx.socket(zmq.PUSH)
        request.linger = 0
        request.connect(args.request)
        for _ in range(args.outstanding):
            request.send_multipart([b"NEXT", socket_id.encode()])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    parts: dict[str, list[bytes]] = {}
    while not stopping:
        if not data.poll(100):
            continue
        frames = data.recv_multipart()
        if len(frames) < 2:
            continue
        meta = json.loads(frames[0])
        fid = f"{meta['relative_path']}/{meta['filename']}" if meta["relative_path"] else meta["filename"]
        if meta["chunk_number"] == 0:
            parts[fid] = []
        parts.setdefault(fid, []).append(frames[1])
        if meta.get("last_chunk"):
            body = b"".join(parts.pop(fid))
            dest = os.path.join(args.out, fid)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest + ".tmp", "wb") as f:
                f.write(body)
            os.rename(dest + ".tmp", dest)
            if request is not None:
                request.send_multipart([b"NEXT", socket_id.encode()])
    data.close()
    if request is not None:
        request.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
