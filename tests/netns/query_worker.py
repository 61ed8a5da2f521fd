"""A QUERY_NEXT analysis worker on our client library (``hidra_core.client.Transfer``), run on the analysis host.

It registers ``--me`` (its own address) with the sender, prints ``READY <socket id>`` and stores every file it
gets below ``--out`` until SIGTERM. Registration refused or unanswered: prints ``REFUSED <error>``, exits 3.
With ``--keys-dir`` it authenticates with CURVE (``ClientKeys``, issue13-contract.md).
"""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from hidra_core.client import HidraClientError, Transfer


def _keys(args: argparse.Namespace) -> dict[str, Any]:
    if args.keys_dir is None:
        return {}
    from hidra_core.client import ClientKeys  # NOTE: there once CURVE is merged (issue13-contract.md)

    return {"keys": ClientKeys.from_dir(args.keys_dir, args.identity, args.server)}


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("--sender", "--me", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--com-port", type=int, required=True)
    p.add_argument("--request-port", type=int, required=True)
    p.add_argument("--keys-dir")
    p.add_argument("--identity", default="analysis")
    p.add_argument("--server", default="sender")
    args = p.parse_args()
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    t = Transfer("QUERY_NEXT", signal_host=args.sender, com_port=args.com_port, request_port=args.request_port,
                 signal_timeout=5, **_keys(args))
    try:
        socket_id = t.start([args.me, 0])
        try:
            t.initiate([[args.me, int(socket_id.rpartition(":")[2]), 1]])
        except HidraClientError as exc:
            print(f"REFUSED {type(exc).__name__}: {exc}", flush=True)
            return 3
        print(f"READY {socket_id}", flush=True)
        while not stopping:
            path = t.store(args.out, timeout_s=0.5)
            if path is not None:
                print(f"STORED {path}", flush=True)
    finally:
        t.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
