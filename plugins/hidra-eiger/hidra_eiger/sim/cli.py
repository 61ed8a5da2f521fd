"""``hidra-eiger-sim``: serve SIMPLON REST and the detector stream on 127.0.0.1 until interrupted."""
from __future__ import annotations

import argparse
import json
import logging
import socket
import sys

import uvicorn
import zmq

from hidra_eiger.sim.detector import API_VERSIONS, Detector
from hidra_eiger.sim.rest import create_app
from hidra_eiger.sim.streamer import Streamer

log = logging.getLogger(__name__)

__all__ = ["main"]


def _size(text: str) -> tuple[int, int]:
    x, sep, y = text.lower().partition("x")
    if not sep or not x.isdigit() or not y.isdigit() or int(x) < 1 or int(y) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 1030x1065, got {text!r}")
    return int(x), int(y)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hidra-eiger-sim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address for REST and stream (default %(default)s)")
    p.add_argument("--port", type=int, default=0, help="REST port; 0 = a free one (default)")
    p.add_argument("--stream-port", type=int, default=0, help="Stream PUSH port; 0 = a free one (default)")
    p.add_argument("--api-version", choices=API_VERSIONS, default="1.8.0",
                   help="SIMPLON version: 1.6.0 = EIGER (Stream V1 only), 1.8.0 = EIGER2 (default)")
    p.add_argument("--size", type=_size, default=(1030, 1065), metavar="XxY",
                   help="frame size, width x height in pixels (default 1030x1065, an EIGER 1M)")
    p.add_argument("--seed", type=int, default=0, help="seed of the frame content (default 0)")
    p.add_argument("--stream-hwm", type=int, default=1000, help="send high-water mark of the PUSH socket")
    p.add_argument("--log-level", default="warning", help="uvicorn and simulator log level (default warning)")
    return p


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"hidra-eiger-sim: cannot bind REST to {host}:{port}: {exc}") from None
    sock.listen(128)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    context = zmq.Context()
    rest = _listen(args.host, args.port)
    try:
        streamer = Streamer(context, args.host, args.stream_port, args.stream_hwm)
    except OSError as exc:
        rest.close()
        context.term()
        raise SystemExit(f"hidra-eiger-sim: {exc}") from None
    detector = Detector(streamer, args.api_version, args.size)
    detector.trees[("simulator", "config")].set("seed", args.seed)
    url = f"http://{args.host}:{rest.getsockname()[1]}"
    # NOTE: one JSON line on stdout, printed once both sockets listen: scripts and tests read it to find the ports
    print(json.dumps({"rest": url, "stream": streamer.endpoint, "api_version": args.api_version}), flush=True)
    config = uvicorn.Config(create_app(detector), log_level=args.log_level.lower(), lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[rest])
    finally:
        streamer.close()
        rest.close()
        context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
