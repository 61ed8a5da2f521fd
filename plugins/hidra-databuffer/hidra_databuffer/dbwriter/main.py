"""``hidra-databuffer-writer``: PULL writing requests from the broker and write each pulse range to HDF5.

Examples::

    hidra-databuffer-writer tcp://127.0.0.1:12500 -1
    hidra-databuffer-writer tcp://broker:12500 1000 --data_retrieval_delay 10 \\
        --data_api_url http://127.0.0.1:10300/query --retries 2 --retry_backoff 5
    hidra-databuffer-writer tcp://127.0.0.1:12500 -1 --status_endpoint tcp://127.0.0.1:12501

    hidra-databuffer-writer --config writer.yaml --set retries=3

writer.yaml is a YAML mapping with the argument names as keys ({"$env": NAME} and {"$file": path} allowed)::

    connect_address: tcp://broker:12500
    user_id: -1
    data_api_url: http://127.0.0.1:10300/query
    data_retrieval_delay: 10
    rest: {address: "127.0.0.1:50091"}   # hidra's API (/status, /metrics, ...); default: a free port

Precedence: defaults < --config file < --set KEY=VALUE < arguments given on the command line.

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
from typing import Any

import zmq

from hidra_core import ConfigError, HidraError, load_model

from hidra_databuffer.api import start_api
from hidra_databuffer.dbwriter.config import WriterConfig
from hidra_databuffer.dbwriter.query import SplitLimits
from hidra_databuffer.dbwriter.service import WriterOptions, WriterService

log = logging.getLogger(__name__)

__all__ = ["main"]


def _help(name: str) -> str:
    field = WriterConfig.model_fields[name]
    default = "" if field.is_required() else f" (default {field.default})"
    return f"{field.description}{default}"


def _parser() -> argparse.ArgumentParser:
    # NOTE: everything defaults to None so that only what is given overrides the config file and --set
    p = argparse.ArgumentParser(prog="hidra-databuffer-writer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("connect_address", nargs="?", help=_help("connect_address") + "; or in --config")
    p.add_argument("user_id", nargs="?", type=int, help=_help("user_id") + "; or in --config")
    p.add_argument("--config", metavar="FILE", help="YAML mapping of these options (keys as the argument names)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option of the file (value parsed as YAML); repeatable; arguments win over it")
    p.add_argument("--data_retrieval_delay", type=float, help=_help("data_retrieval_delay"))
    p.add_argument("--log_level", help=_help("log_level"))
    p.add_argument("--data_api_url", help=_help("data_api_url"))
    p.add_argument("--retries", type=int, help=_help("retries"))
    p.add_argument("--retry_backoff", type=float, help=_help("retry_backoff"))
    p.add_argument("--queue_size", type=int, help=_help("queue_size"))
    p.add_argument("--status_endpoint", metavar="ENDPOINT", help=_help("status_endpoint"))
    return p


def _config(args: argparse.Namespace) -> WriterConfig:
    flags = {key: value for key, value in vars(args).items()
             if value is not None and key not in ("config", "overrides")}
    try:
        return load_model(WriterConfig, args.config, args.overrides, origin="the command line", flags=flags)
    except ConfigError as exc:
        raise SystemExit(f"hidra-databuffer-writer: {exc}") from None


def _drop_privileges(user_id: int) -> None:
    if user_id == -1:
        return
    try:
        os.setgid(user_id)
        os.setuid(user_id)
    except OSError as exc:
        raise SystemExit(f"hidra-databuffer-writer: cannot switch to user id {user_id}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    config = _config(_parser().parse_args(argv))
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _drop_privileges(config.user_id)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current request", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    options = WriterOptions(config.data_api_url, config.data_retrieval_delay, config.retries, config.retry_backoff,
                            split=SplitLimits(config.query_max_pulses, config.query_max_bytes,
                                              config.query_binary))
    context = zmq.Context()
    api = None
    try:
        service = WriterService(context, config.connect_address, options, config.queue_size,
                                config.status_endpoint)
        drain = threading.Event()
        try:
            api = _start_api(config, service, stop, drain)
        except HidraError:
            service.close()  # NOTE: else context.term() waits for its sockets for ever
            raise
        # NOTE: printed whatever the log level: scripts and tests wait for this line.
        print(f"hidra databuffer writer ready: pull {config.connect_address}, data api {config.data_api_url}, "
              f"status {config.status_endpoint or 'off'}, api {api.url if api else 'off'}, pid {os.getpid()}",
              file=sys.stderr, flush=True)
        service.serve(stop, drain=drain)
    except zmq.ZMQError as exc:
        where = " or ".join(filter(None, [config.connect_address, config.status_endpoint]))
        raise SystemExit(f"hidra-databuffer-writer: cannot connect to {where}: {exc}") from None
    except HidraError as exc:
        raise SystemExit(f"hidra-databuffer-writer: {exc}") from None
    finally:
        if api is not None:
            api.stop()
        context.term()
    return 0


def _start_api(config: WriterConfig, service: WriterService, stop: threading.Event, drain: threading.Event) -> Any:
    """hidra's API of this writer: POST /drain finishes the request in hand, POST /stop also cuts short its
    retrieval delay or retry wait (as SIGTERM does)."""
    counters = service.counters

    def on_drain() -> None:
        counters.state = "draining"
        drain.set()

    def on_stop() -> None:
        counters.state = "stopping"
        stop.set()

    where = {"pull": config.connect_address, "data_api": config.data_api_url, "results": config.status_endpoint}
    return start_api("databuffer-writer", config.rest, config, where,
                     lambda: counters.snapshot({"busy": int(service.busy)}), on_drain, on_stop)


if __name__ == "__main__":
    sys.exit(main())
