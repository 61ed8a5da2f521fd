"""The ``hidra`` command line; the only place where logging is configured."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from typing import Any, Sequence

from hidra_core._version import __version__
from hidra_core.config import blame_overrides
from hidra_core.errors import ConfigError, HidraError
from hidra_core.host.logformat import FORMATS
from hidra_core.host.logformat import configure as configure_logging
from hidra_core.host.plugins import PluginHost

__all__ = ["main"]

log = logging.getLogger(__name__)

_EPILOGS = {
    "up": """
        example:
          hidra up                                  # ./hidra-data/source -> ./hidra-data/target
          hidra up --source /ramdisk/det1 --target /gpfs/beamtime/raw --set receiver.files.fsync=false
          hidra up --workers 4 --streams 4          # 4 receiver processes, a sender with 4 data pipelines
          hidra up --curve                          # CURVE on every socket, throwaway keys in ./hidra-data/keys
        Every file closed or moved into the source tree (any depth) appears byte-identical and atomically
        in the target tree. Ctrl-C (or SIGTERM) drains in-flight files and stops both processes.""",
    "sender": """
        example:
          hidra sender --config sender.yaml
          hidra sender --set sender.storage.data=tcp://storage01:50100 \\
                       --set sender.storage.confirmations=tcp://storage01:50053 \\
                       --set sender.storage.remove_source=after_confirmation""",
    "receiver": """
        example:
          hidra receiver --config receiver.yaml
          hidra receiver --set receiver.target=/gpfs/raw --set receiver.data=tcp://0.0.0.0:50100 \\
                         --set receiver.confirmations=tcp://0.0.0.0:50053
          hidra receiver --workers 3 --config receiver.yaml   # a group: data 50100-50102, confirmations 50053-50055
          # its senders (the group logs these --set options with its real endpoints once every worker is ready):
          hidra sender --set 'sender.storage.data=[tcp://st01:50100, tcp://st01:50101, tcp://st01:50102]' \\
                       --set 'sender.storage.confirmations=[tcp://st01:50053, tcp://st01:50054, tcp://st01:50055]'""",
    "plugins": """
        example:
          hidra plugins          # every installed plugin, its distribution and version, and load errors""",
    "ledger": """
        example:
          hidra ledger --config sender.yaml      # counts per state, then files not yet confirmed
          hidra ledger --set sender.ledger.path=/var/lib/hidra/det1.sqlite --limit 1000""",
    "clients": """
        example:
          hidra clients                                   # the local sender (clients.com of the config)
          hidra clients --com tcp://detpc01:50000 --json  # registrations and per-target counters as JSON""",
    "status": """
        examples:
          hidra status                                    # this config's sender and receiver (their rest.address)
          hidra status http://detpc01:50080 http://storage01:50081 --token-file /etc/hidra/rest-token --watch 2""",
    "backfill": """
        examples:
          hidra backfill /data/det1/run42     # through the local sender (sender.rest.address of the config)
          hidra backfill /data/det1/run42 --url http://detpc01:50080 --token-file /etc/hidra/rest-token
        Sends every file below DIR (inside the sender's source tree) that the sender's ledger does not hold as
        stored, e.g. files written while the sender was down. Interrupted? The same command again sends only what
        is still missing.""",
    "config": """
        examples:
          hidra config check sender.yaml --set sender.chunksize=4194304
          hidra config show --config sender.yaml   # the effective config, defaults filled in
          hidra config reference > docs/config-reference.md""",
}


def _log_level(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=default,
                        help="default: log_level of the config (INFO)")
    parser.add_argument("--log-format", choices=FORMATS, default=default,
                        help="text (default; with syslog priorities under systemd's journal) or json: one object per"
                        " line, with file_id and state on every line that records a file's state change")


def _set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", "-s", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override one config key (value parsed as YAML); repeatable")


def _workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, metavar="N",
                        help="run a group of N receiver processes on this host (receiver.workers=N), e.g. --workers 3:"
                        " worker i binds the data and confirmation ports + i, worker 0 alone the status port")


def _token_options(parser: argparse.ArgumentParser) -> None:
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token (where the processes require one)")
    token.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE")


def _common(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", required=config_required,
                        help="instance config (YAML); without it the embedded defaults are used")
    _set(parser)


def _sub(subs: Any, name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser = subs.add_parser(name, help=help_text, description=help_text, **kwargs)
    # NOTE: SUPPRESS keeps a --log-level given before the subcommand when none is given after it.
    _log_level(parser, argparse.SUPPRESS)
    return parser


def _command(subs: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    return _sub(subs, name, help_text, epilog=textwrap.dedent(_EPILOGS.get(name, "")),
                formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser(host: PluginHost) -> argparse.ArgumentParser:
    from hidra_core.cli import commands

    parser = argparse.ArgumentParser(
        prog="hidra", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="HiDRA moves detector data from where it is produced to storage and online analysis.",
        epilog=textwrap.dedent("""
            quick start:
              hidra up                      # watch ./hidra-data/source, store into ./hidra-data/target
              hidra <command> --help        # every command has an example"""))
    parser.add_argument("--version", action="version", version=f"hidra-core {__version__}")
    _log_level(parser)
    host.add_options(parser)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = _command(subs, "up", "run a sender and a storage receiver on loopback (the embedded default)")
    up.add_argument("--source", metavar="DIR", help="directory tree to watch (default ./hidra-data/source)")
    up.add_argument("--target", metavar="DIR", help="directory to store into (default ./hidra-data/target)")
    _workers(up)
    up.add_argument("--streams", type=int, metavar="N",
                    help="data pipelines of the sender (sender.streams=N), e.g. --streams 4 with --workers 4")
    up.add_argument("--curve", action="store_true", help="CURVE on every socket, with throwaway key pairs (sender,"
                    " receiver, client) made once in ./hidra-data/keys")
    _common(up)
    up.set_defaults(func=commands.up)

    for name, func, text in (("sender", commands.sender, "run a sender: event source -> storage target"),
                             ("receiver", commands.receiver, "run a storage receiver")):
        p = _command(subs, name, text)
        if name == "receiver":
            _workers(p)
        _common(p)
        p.set_defaults(func=func)

    led = _command(subs, "ledger", "report a sender's ledger: files per state and those not confirmed")
    _common(led)
    led.add_argument("--limit", type=int, default=50, help="most unconfirmed files to list (default 50)")
    led.set_defaults(func=commands.ledger)

    cl = _command(subs, "clients", "list a running sender's analysis clients and their counters")
    _common(cl)
    cl.add_argument("--com", metavar="ENDPOINT", help="the sender's com endpoint (default: clients.com of the config)")
    cl.add_argument("--json", action="store_true", help="print the raw JSON")
    cl.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    cl.add_argument("--key", metavar="NAME", default="client", help="with security.curve on: your key pair in"
                    " security.keys_dir, one of the sender's allow_clients (default: client)")
    cl.set_defaults(func=commands.clients)

    st = _command(subs, "status", "a table of running HiDRA processes, from their REST API")
    _common(st)
    st.add_argument("urls", nargs="*", metavar="URL",
                    help="REST URLs (default: sender.rest and receiver.rest of the config, where enabled)")
    _token_options(st)
    st.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                    help="refresh in place every SECONDS (default 2) until Ctrl-C, with rates")
    st.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N tables")
    st.set_defaults(func=commands.status)

    bf = _command(subs, "backfill", "send a directory that is already there through the running sender")
    _common(bf)
    bf.add_argument("dir", metavar="DIR", help="directory inside the sender's source tree")
    bf.add_argument("--url", help="the sender's REST URL (default: sender.rest.address of the config)")
    _token_options(bf)
    bf.add_argument("--no-progress", action="store_true", help="no progress bar; only the summary at the end")
    bf.set_defaults(func=commands.backfill)

    plugins = _command(subs, "plugins", "list installed plugins, their distributions and load errors")
    plugins.set_defaults(func=commands.plugins)

    config = _command(subs, "config", "validate, show or document configuration")
    csubs = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = _sub(csubs, "check", "validate FILE as a run would: build every driver (directories must exist), check"
                 " that source and targets lie apart; opens no socket and no watch")
    check.add_argument("file", metavar="FILE")
    _set(check)
    check.add_argument("--role", choices=["sender", "receiver", "both"],
                       help="what to check (default: the sections FILE and --set give, both if both or neither)")
    check.set_defaults(func=commands.config_check)
    show = _sub(csubs, "show", "print the effective configuration as YAML")
    _common(show)
    show.set_defaults(func=commands.config_show)
    ref = _sub(csubs, "reference", "print the configuration reference (Markdown) from the models")
    ref.set_defaults(func=commands.config_reference)

    from hidra_core.security.cli import add_keys_command
    add_keys_command(subs)

    host.register_commands(subs)
    return parser


def _disabled_from_argv(argv: Sequence[str]) -> list[str]:
    """``plugins.disabled`` of a ``--config`` file, read before the parser exists (hooks extend it)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", "-c")
    known, _ = pre.parse_known_args(argv)
    if not known.config or not os.path.isfile(known.config):
        return []
    import yaml

    try:
        raw = yaml.safe_load(open(known.config).read()) or {}
        return list((raw.get("plugins") or {}).get("disabled") or [])
    except Exception:  # the real load reports the problem with file, section and key
        return []


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    host = PluginHost()
    host.load_entry_points(_disabled_from_argv(argv))
    parser = build_parser(host)
    args = parser.parse_args(argv)
    args.host = host
    configure_logging(args.log_level or "INFO", getattr(args, "log_format", None) or "text")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"hidra: error: {blame_overrides(exc, getattr(args, 'overrides', []))}", file=sys.stderr)
        return 2
    except HidraError as exc:
        print(f"hidra: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hidra: error: {exc}", file=sys.stderr)
        return 1
