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
from hidra_eiger.sim.faults import KNOB_HELP
from hidra_eiger.sim.params import ParamError
from hidra_eiger.sim.rest import create_app
from hidra_eiger.sim.streamer import Streamer

log = logging.getLogger(__name__)

__all__ = ["main"]


def _size(text: str) -> tuple[int, int]:
    x, sep, y = text.lower().partition("x")
    if not sep or not x.isdigit() or not y.isdigit() or int(x) < 1 or int(y) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 1030x1065, got {text!r}")
    return int(x), int(y)


_EPILOG = """\
FileWriter (eiger.md §3): PUT filewriter/config/mode "enabled", then arm + trigger write <name_pattern>_master.h5
(listed at arm, final when the series ends) and <name_pattern>_data_NNNNNN.h5 (nimages_per_file images each, listed
with their first image, growing until their last; nimages_per_file 0 = master only). $id in name_pattern is the
series id; a / in it makes sub-directories. Files live in RAM, as on a DCU:
  GET  /filewriter/api/1.6.0/files/           -> ["series_1_master.h5", ...]          (1.6: a bare list)
  GET  /filewriter/api/1.8.0/files             -> {"value": [...] or null, ...}       (1.8; also files/, status/files)
  GET|HEAD /data/<path>   (Content-Length, ETag, Last-Modified)      DELETE /data/<path> -> 204, 404 when missing
Test control (simulator module): PUT simulator/api/<v>/command/reboot wipes every file;
PUT simulator/api/<v>/command/put_file {"value": {"path": "a/b.h5", "size": N}} (or "content_b64") adds a file;
GET simulator/api/<v>/status/created (every file ever created: size, md5, deleted, wiped) and status/requests.
Knobs (PUT simulator/api/<v>/config/<name> {"value": x} at run time, or --fault NAME=VALUE at start):
""" + "".join(f"  {name:<21}{text}\n" for name, text in KNOB_HELP.items()) + """
HiDRA 4.x's http_events reads a DCU at http://<det_ip>/filewriter/api/<det_api_version>/files and
/data/<file>: run the simulator with --api-version 1.6.0 --port 80 (or the port the old sender's URL names).
"""


def _fault(text: str) -> tuple[str, object]:
    name, sep, raw = text.partition("=")
    if not sep or name not in KNOB_HELP:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {sorted(KNOB_HELP)}, got {text!r}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw  # NOTE: a bare word (file_content=random) is a string


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hidra-eiger-sim", description=__doc__, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address for REST and stream (default %(default)s)")
    p.add_argument("--port", type=int, default=0, help="REST port; 0 = a free one (default)")
    p.add_argument("--stream-port", type=int, default=0, help="Stream PUSH port; 0 = a free one (default)")
    p.add_argument("--api-version", choices=API_VERSIONS, default="1.8.0",
                   help="SIMPLON version: 1.6.0 = EIGER (Stream V1 only), 1.8.0 = EIGER2 (default)")
    p.add_argument("--size", type=_size, default=(1030, 1065), metavar="XxY",
                   help="frame size, width x height in pixels (default 1030x1065, an EIGER 1M)")
    p.add_argument("--seed", type=int, default=0, help="seed of the frame content (default 0)")
    p.add_argument("--stream-hwm", type=int, default=1000, help="send high-water mark of the PUSH socket")
    p.add_argument("--file-content", choices=("hdf5", "random"), default="hdf5",
                   help="FileWriter files: real HDF5 (default) or random bytes (knob random_file_bytes)")
    p.add_argument("--fault", type=_fault, action="append", default=[], metavar="NAME=VALUE",
                   help="set a simulator knob at start (repeatable; the knobs are listed below)")
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
    try:
        for name, value in [("file_content", args.file_content), *args.fault]:
            detector.put("simulator", "config", name, value)
    except ParamError as exc:
        streamer.close()
        rest.close()
        context.term()
        raise SystemExit(f"hidra-eiger-sim: --fault: {exc.message}") from None
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
