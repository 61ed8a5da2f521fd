"""``hidra-databuffer-broker``: DBW's REST broker; turns start/stop pulse ids into writing requests for the writers.

Examples::

    hidra-databuffer-broker -c channels.txt --audit_file /var/log/sf_databuffer_audit.log
    hidra-databuffer-broker --rest_port 0 --output_port 0 --audit_file audit.log   # free ports, see the ready line
    hidra-databuffer-broker --audit_trail_only --audit_file audit.log               # record only, replay later
    hidra-databuffer-broker --config broker.yaml --set rest_port=8889 --log_level DEBUG
    hidra-databuffer-broker --set rest.address=127.0.0.1:0    # hidra's API (/status, /metrics, ...) on a free port

    curl -X POST -d '{"general/created": "...", ..., "output_file": "/data/run1.h5"}' localhost:8888/parameters
    curl -X PUT localhost:8888/start_pulse_id/1000; curl -X PUT localhost:8888/stop_pulse_id/1100

A --config file is a YAML mapping with the long flags' names as keys ({"$env": NAME} and {"$file": path} values
allowed); broker.yaml::

    rest_port: 8888
    output_port: 12500
    audit_file: /var/log/sf_databuffer_audit.log
    channels_file: /etc/databuffer/channels.txt
    rest: {address: "127.0.0.1:50090"}   # hidra's API beside DBW's; off loopback only with a token

Precedence: defaults < --config file < --set KEY=VALUE < flags given on the command line.
"""
from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from pathlib import Path

import uvicorn
from typing import Any

from hidra_core import ConfigError, HidraError, load_model

from hidra_databuffer.api import start_api
from hidra_databuffer.broker.app import Broker, create_app
from hidra_databuffer.broker.audit import AuditTrail
from hidra_databuffer.broker.config import BrokerConfig
from hidra_databuffer.broker.requests import load_channels
from hidra_databuffer.broker.state import BrokerState, Statistics
from hidra_databuffer.broker.transport import RequestSender

__all__ = ["main", "serve"]

log = logging.getLogger(__name__)


def _level(text: str) -> str:
    if not isinstance(logging.getLevelName(text.upper()), int):
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return text.upper()


def _default(name: str) -> str:
    return f"default {BrokerConfig.model_fields[name].default}"


def _parser() -> argparse.ArgumentParser:
    # NOTE: flags default to None so that only the ones given override the config file and --set
    p = argparse.ArgumentParser(prog="hidra-databuffer-broker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML mapping of the options below (keys as the long flags)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option of the file (value parsed as YAML); repeatable; flags win over it")
    p.add_argument("-c", "--channels_file", type=Path, help="channel names, one a line (at most 100, 2 cameras)")
    p.add_argument("-o", "--output_port", type=int, help=f"request PUSH port ({_default('output_port')})")
    p.add_argument("--output_host", help=f"PUSH bind interface, '*' = all ({_default('output_host')})")
    p.add_argument("-q", "--queue_length", type=int, help=f"ZeroMQ HWM ({_default('queue_length')})")
    p.add_argument("--rest_host", help=f"REST interface ({_default('rest_host')})")
    p.add_argument("--rest_port", type=int, help=f"REST port, 0 = free ({_default('rest_port')})")
    p.add_argument("--log_level", type=_level, help=f"logging level ({_default('log_level')})")
    p.add_argument("--audit_trail_only", action="store_const", const=True,
                   help="write audit lines, never send requests")
    p.add_argument("--audit_file", type=Path, help=f"audit trail ({_default('audit_file')})")
    p.add_argument("--send_timeout_ms", type=int,
                   help=f"no writer within this -> error reply ({_default('send_timeout_ms')})")
    p.add_argument("--epics_writer_url", help="optional EPICS writer side-channel URL (off by default)")
    p.add_argument("--no_camera_split", dest="camera_split", action="store_const", const=False,
                   help="send camera channels in the one request instead of a second one to <name>.IMAGES.h5")
    return p


def _config(args: argparse.Namespace) -> BrokerConfig:
    flags = {key: value for key, value in vars(args).items()
             if value is not None and key not in ("config", "overrides")}
    return load_model(BrokerConfig, args.config, args.overrides, origin="the command line", flags=flags)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError("--rest_host/--rest_port", [f"cannot bind the REST API to {host}:{port}: {exc}"]) from None
    sock.listen(128)
    return sock


def _open(config: BrokerConfig) -> tuple[Broker, socket.socket]:
    channels = load_channels(config.channels_file)
    try:
        audit = AuditTrail(config.audit_file)
    except OSError as exc:
        raise ConfigError("--audit_file", [f"cannot append to {config.audit_file}: {exc}"]) from None
    rest = _listen(config.rest_host, config.rest_port)
    try:
        sender = RequestSender(config.output_host, config.output_port, config.queue_length, config.send_timeout_ms)
    except Exception as exc:
        rest.close()
        raise ConfigError("--output_host/--output_port", [f"cannot bind the request socket to "
                          f"{config.output_host}:{config.output_port}: {exc.__cause__ or exc}"]) from None
    state = BrokerState(statistics=Statistics(time.strftime("%Y%m%d-%H%M%S")))
    return Broker(config, channels, audit, sender, state), rest


def serve(config: BrokerConfig) -> None:
    """Run the broker until interrupted; ConfigError before anything listens if the setup is refused."""
    broker, rest = _open(config)
    host, port = rest.getsockname()[:2]
    level = "info" if config.log_level.upper() == "DEBUG" else "warning"
    server = uvicorn.Server(uvicorn.Config(create_app(broker), log_level=level, lifespan="off"))
    try:
        api = _start_api(config, broker, server, f"http://{host}:{port}")
    except Exception:
        broker.sender.close()
        rest.close()
        raise
    only = " (audit trail only: nothing is sent)" if config.audit_trail_only else ""
    ready = (f"hidra databuffer broker ready: rest http://{host}:{port}, requests {broker.sender.endpoint}, "
             f"audit {config.audit_file}{only}, {len(broker.channels)} channels, api {api.url if api else 'off'}")
    log.info("%s", ready)
    print(ready, flush=True)  # NOTE: scripts and tests read this line to find the ports
    try:
        server.run(sockets=[rest])
    finally:
        if api is not None:
            api.stop()
        broker.sender.close()
        rest.close()


def _start_api(config: BrokerConfig, broker: Broker, server: uvicorn.Server, url: str) -> Any:
    """hidra's API of this broker: POST /drain lets DBW's API answer what it is handling, then stops it; POST
    /stop does not wait for open connections."""
    counters = broker.counters

    def drain() -> None:
        counters.state = "draining"
        server.should_exit = True

    def stop() -> None:
        counters.state = "stopping"
        server.should_exit = server.force_exit = True

    def snapshot() -> dict[str, Any]:
        receiving = int(broker.state.status == "receiving")
        out = counters.snapshot({"channels": len(broker.channels), "receiving": receiving})
        out["statistics"]["status"] = broker.state.status
        return out

    where = {"rest": url, "requests": broker.sender.endpoint, "audit": str(config.audit_file),
             "audit_trail_only": config.audit_trail_only, "channels": broker.channels}
    return start_api("databuffer-broker", config.rest, config, where, snapshot, drain, stop)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        serve(config)
    except HidraError as exc:  # NOTE: a refused config, or a port taken
        print(f"hidra-databuffer-broker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
