"""``hidra databuffer up|buffer|broker|writer|replay``: the DataBuffer writer's processes under one command.

A pluggy hook plugin (entry point group ``hidra``): the kernel knows nothing of the databuffer. ``broker``,
``writer`` and ``replay`` hand their arguments to the services' own command lines (``hidra-databuffer-broker``
and friends, which keep DBW's flags); ``buffer`` records a bsread stream (``hidra up`` with the ``bsread`` source
and the ``databuffer`` writer); ``up`` runs the buffer, the broker and N writers together and stops them together.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
from typing import Any, Callable

from hidra_core import Notifier, NotifyRelay, hookimpl, supervise

from hidra_databuffer.api import BROKER_API_PORT

log = logging.getLogger(__name__)

_SERVICES = {
    "broker": ("hidra_databuffer.broker.main", "the REST broker: start/stop pulse ids -> writing requests + audit"),
    "writer": ("hidra_databuffer.dbwriter.main", "one HDF5 writer: PULLs requests, queries the buffer, writes"),
    "replay": ("hidra_databuffer.dbwriter.replay", "re-run requests from .err files or audit lines"),
}
_EXAMPLES = """examples:
  hidra databuffer up --source tcp://127.0.0.1:9999                    # buffer + broker + one writer
  hidra databuffer up --source tcp://sender:9999 --writers 3 -c channels.txt --audit_file audit.log
  hidra databuffer buffer --source tcp://127.0.0.1:9999 --query-port 10300
  hidra databuffer broker -c channels.txt --rest_port 8888 --output_port 12500
  hidra databuffer writer tcp://127.0.0.1:12500 -1 --data_api_url http://127.0.0.1:10300/query
  hidra databuffer replay /data/run7.h5.err
"""


def _service(module: str) -> Callable[[list[str]], int]:
    main: Callable[[list[str]], int] = importlib.import_module(module).main
    return main


@hookimpl
def hidra_register_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("databuffer", help="the DataBuffer writer: record bsread, write pulse ranges",
                                   description=__doc__, epilog=_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="databuffer_command", required=True, metavar="COMMAND")
    for name, (module, text) in _SERVICES.items():
        sub = commands.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        sub.add_argument("arguments", nargs=argparse.REMAINDER, help="its own options (--help lists them)")
        sub.set_defaults(func=lambda args, module=module: _service(module)(args.arguments))
    buffer = commands.add_parser("buffer", help="record a bsread stream into the local data buffer")
    _buffer_options(buffer)
    buffer.set_defaults(func=_run_buffer)
    up = commands.add_parser("up", help="buffer, broker and writers together on this host", epilog=_EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    _buffer_options(up)
    up.add_argument("--writers", type=int, default=1, help="writer processes sharing the requests (default 1)")
    up.add_argument("--rest_port", type=int, default=8888, help="broker REST port (default 8888)")
    up.add_argument("--output_port", type=int, default=12500, help="broker request port (default 12500)")
    up.add_argument("-c", "--channels_file", help="the broker's channels file (one name per line)")
    up.add_argument("--audit_file", default="databuffer-audit.log", help="the broker's audit trail")
    up.add_argument("--api_port", type=int, default=BROKER_API_PORT,
                    help="port of the broker's hidra API (status, statistics, metrics on 127.0.0.1); writer i gets"
                    " port + i; 0: free ports, each ready line tells its own (default %(default)s)")
    up.set_defaults(func=_run_up)


def _buffer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="the bsread stream, e.g. tcp://HOST:9999")
    parser.add_argument("--mode", choices=("pull", "sub"), default="pull", help="how to connect (default pull)")
    parser.add_argument("--query-port", type=int, default=10300, help="the buffer's query API port (default 10300)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config key of the buffer's sender or receiver (repeatable)")


def _buffer_argv(args: argparse.Namespace) -> list[str]:
    sets = ["sender.source.type=bsread", f"sender.source.bsread.address={json.dumps(args.source)}",
            f"sender.source.bsread.mode={args.mode}", 'receiver.writers=["databuffer"]',
            f"receiver.databuffer.http_port={args.query_port}", *args.sets]
    return [sys.executable, "-m", "hidra_core", "up", *(a for s in sets for a in ("--set", s))]


def _env() -> dict[str, str]:
    # NOTE: bitshuffle's OpenMP threads spin against each other on small machines (databuffer.md §11)
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _run_buffer(args: argparse.Namespace) -> int:
    # NOTE: `hidra up` already supervises a sender and a receiver; this process becomes it
    argv = _buffer_argv(args)
    os.execve(argv[0], argv, _env())
    return 1  # pragma: no cover  (execv does not return)


def _api(args: argparse.Namespace, i: int) -> list[str]:
    """The ``--set`` giving the broker (i = 0) and writer i their hidra API port."""
    return ["--set", f"rest.address=127.0.0.1:{args.api_port + i if args.api_port else 0}"]


def _run_up(args: argparse.Namespace) -> int:
    query = f"http://127.0.0.1:{args.query_port}/query"
    broker = ["--rest_port", str(args.rest_port), "--output_port", str(args.output_port), "--audit_file",
              args.audit_file, *(["-c", args.channels_file] if args.channels_file else []), *_api(args, 0)]
    # NOTE: under systemd (Type=notify) the buffer (a `hidra up`) says when it is ready; the others are at once
    relay = NotifyRelay() if Notifier().enabled else None
    env = relay.child_env(_env()) if relay is not None else _env()
    children: dict[str, Any] = {"buffer": subprocess.Popen(_buffer_argv(args), env=env)}
    if relay is not None:
        relay.expect({children["buffer"].pid})
    children["broker"] = subprocess.Popen([sys.executable, "-m", "hidra_databuffer.broker.main", *broker], env=env)
    for n in range(args.writers):
        children[f"writer {n + 1}"] = subprocess.Popen([
            sys.executable, "-m", "hidra_databuffer.dbwriter.main", f"tcp://127.0.0.1:{args.output_port}", "-1",
            "--data_api_url", query, *_api(args, n + 1)], env=env)
    log.info("hidra databuffer up: %s -> buffer (query %s), broker REST 127.0.0.1:%d, %d writers, hidra API of"
             " the broker and the writers from port %d", args.source, query, args.rest_port, args.writers,
             args.api_port)
    # NOTE: the broker stops first (no new requests), then the writers finish theirs, then the buffer
    order = ["broker", *(k for k in children if k.startswith("writer")), "buffer"]
    return supervise({name: children[name] for name in order}, relay=relay)
