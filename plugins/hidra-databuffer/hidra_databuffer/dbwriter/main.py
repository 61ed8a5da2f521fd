"""``hidra-databuffer-writer``: PULL writing requests from the broker and write each pulse range to HDF5.

Examples::

    hidra-databuffer-writer tcp://127.0.0.1:12500 -1
    hidra-databuffer-writer tcp://broker:12500 1000 --data_retrieval_delay 10 \\
        --data_api_url http://127.0.0.1:10300/query --retries 2 --retry_backoff 5
    hidra-databuffer-writer tcp://127.0.0.1:12500 -1 --status_endpoint tcp://127.0.0.1:12501

Run N processes on the same broker port to write N files at once (ZeroMQ deals requests round-robin).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

import zmq

from hidra_databuffer.dbwriter.query import DEFAULT_DATA_API_URL
from hidra_databuffer.dbwriter.service import WriterOptions, WriterService

log = logging.getLogger(__name__)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hidra-databuffer-writer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("connect_address", help="broker PUSH address to connect to, e.g. tcp://127.0.0.1:12500")
    p.add_argument("user_id", type=int, help="uid (and gid) to run as; -1 keeps the current privileges")
    p.add_argument("--data_retrieval_delay", type=float, default=0.0,
                   help="seconds after the request's creation before the data API is queried (default 0)")
    p.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument("--data_api_url", default=DEFAULT_DATA_API_URL,
                   help="full query URL of the data API (default %(default)s)")
    p.add_argument("--retries", type=int, default=0, help="further attempts after a failed write (default 0)")
    p.add_argument("--retry_backoff", type=float, default=1.0, help="seconds between attempts (default 1)")
    p.add_argument("--queue_size", type=int, default=1,
                   help="requests held by this writer's receive queue (ZeroMQ RCVHWM, default 1)")
    p.add_argument("--status_endpoint", metavar="ENDPOINT",
                   help="publish one JSON write result per request (topic databuffer.write) on a PUB socket "
                        "that connects here, where a monitor's SUB binds; every writer may use the same one "
                        "(default: off)")
    return p


def _drop_privileges(user_id: int) -> None:
    if user_id == -1:
        return
    try:
        os.setgid(user_id)
        os.setuid(user_id)
    except OSError as exc:
        raise SystemExit(f"hidra-databuffer-writer: cannot switch to user id {user_id}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.retries < 0 or args.retry_backoff < 0 or args.queue_size < 1 or args.data_retrieval_delay < 0:
        raise SystemExit("hidra-databuffer-writer: --retries, --retry_backoff and --data_retrieval_delay must be "
                         ">= 0 and --queue_size >= 1")
    _drop_privileges(args.user_id)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current request", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    options = WriterOptions(args.data_api_url, args.data_retrieval_delay, args.retries, args.retry_backoff)
    context = zmq.Context()
    try:
        service = WriterService(context, args.connect_address, options, args.queue_size, args.status_endpoint)
        # NOTE: printed whatever the log level: scripts and tests wait for this line.
        print(f"hidra databuffer writer ready: pull {args.connect_address}, data api {args.data_api_url}, "
              f"status {args.status_endpoint or 'off'}, pid {os.getpid()}", file=sys.stderr, flush=True)
        service.serve(stop)
    except zmq.ZMQError as exc:
        where = " or ".join(filter(None, [args.connect_address, args.status_endpoint]))
        raise SystemExit(f"hidra-databuffer-writer: cannot connect to {where}: {exc}") from None
    finally:
        context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
