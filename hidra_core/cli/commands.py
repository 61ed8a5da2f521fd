"""What each ``hidra`` subcommand does; ``cli.py`` builds the parser and handles errors."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys

import yaml
from typing import Any

from hidra_core.config import InstanceConfig, load_config
from hidra_core.errors import ConfigError, HidraError
from hidra_core.host.build import check_config, check_separate, default_ledger_path, source_driver, source_key
from hidra_core.host.drivers import discover, load_driver_class
from hidra_core.host.notify import Notifier, NotifyRelay
from hidra_core.host.supervise import STOP_MARGIN_S, supervise

__all__ = ["backfill", "clients", "config_check", "config_reference", "config_show", "ledger", "plugins", "receiver",
           "sender", "status", "up"]

log = logging.getLogger(__name__)


def _load(args: argparse.Namespace, extra: list[str] | None = None) -> InstanceConfig:
    config = load_config(args.config, [*args.overrides, *(extra or [])])
    if not getattr(args, "log_level", None):
        logging.getLogger().setLevel(config.log_level)
    return config


def sender(args: argparse.Namespace) -> int:
    from hidra_core.sender.router import Sender

    return Sender(_load(args), args.host, source_name=args.config or "<defaults>").run()


def receiver(args: argparse.Namespace) -> int:
    from hidra_core.receiver.group import prepare_worker, run_group
    from hidra_core.receiver.loop import Receiver

    prepare_worker()
    origin = args.config or "<defaults>"
    args.overrides = [*args.overrides, *_flag_overrides(args)]  # NOTE: so that an error names them too
    config = _load(args)
    if config.receiver.workers == 1:
        return Receiver(config, args.host, source_name=origin).run()
    check_config(config, origin, ("receiver",))  # NOTE: once here rather than in each worker
    return run_group(config.receiver, _child_argv(args, "receiver"), origin)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """``--workers N`` and ``--streams N`` as the ``--set`` assignments they stand for."""
    flags = (("workers", "receiver.workers"), ("streams", "sender.streams"))
    return [f"{key}={getattr(args, flag)}" for flag, key in flags if getattr(args, flag, None) is not None]


def _child_argv(args: argparse.Namespace, role: str, extra: list[str] | None = None) -> list[str]:
    """The command line of a child ``hidra <role>`` with this command's config, overrides and log level."""
    top = ["--log-level", args.log_level] if getattr(args, "log_level", None) else []
    if getattr(args, "log_format", None):
        top += ["--log-format", args.log_format]
    rest = ["--config", args.config] if args.config else []
    for assignment in [*args.overrides, *(extra or [])]:
        rest += ["--set", assignment]
    return [sys.executable, "-m", "hidra_core", *top, role, *rest]


def up(args: argparse.Namespace) -> int:
    """Start a receiver and a sender as child processes and supervise them."""
    origin = args.config or "<defaults>"
    args.overrides = [*args.overrides, *_flag_overrides(args)]
    extra, source_dir = _up_overrides(args, _load(args))
    config = load_config(args.config, [*args.overrides, *extra])
    if config.receiver.workers > 1:
        from hidra_core.receiver.group import sender_overrides

        extra += sender_overrides(config.receiver, origin)
        config = load_config(args.config, [*args.overrides, *extra])
    root = source_dir or source_driver(config, origin).root
    # NOTE: before any directory is made, so a refused pair leaves nothing behind.
    check_separate((source_key(config.sender.source), root), ("receiver.target", config.receiver.target), origin)
    for directory in (source_dir, config.receiver.target):
        if directory:
            os.makedirs(directory, exist_ok=True)
    if args.curve:
        from hidra_core.security.cli import up_overrides

        extra += up_overrides()
        config = load_config(args.config, [*args.overrides, *extra])
    check_config(config, origin)  # fail here, not in a child, if the result cannot run
    # NOTE: the children inherit an ignored SIGINT (and keep it, see StopFlag): Ctrl-C reaches only this
    # process, which stops the sender before the receiver.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    relay = NotifyRelay() if Notifier().enabled else None  # NOTE: systemd hears this process once both are ready
    env = relay.child_env() if relay is not None else None
    children = {role: subprocess.Popen(_child_argv(args, role, extra), env=env) for role in ("receiver", "sender")}
    if relay is not None:
        relay.expect({child.pid for child in children.values()})
    shown = root if root and "://" in root else os.path.abspath(root or "")  # NOTE: a stream source's address
    log.info("hidra up: %s -> %s (Ctrl-C stops)", shown, os.path.abspath(config.receiver.target))
    # NOTE: the sender first (it finishes the file in flight, within its drain_timeout_s), then the receiver
    # NOTE: a receiver group's parent itself gives its workers up to STOP_MARGIN_S
    return supervise({"sender": children["sender"], "receiver": children["receiver"]},
                     {"sender": config.sender.drain_timeout_s + STOP_MARGIN_S,
                      "receiver": STOP_MARGIN_S * (2 if config.receiver.workers > 1 else 1)}, relay=relay)


def _up_overrides(args: argparse.Namespace, config: InstanceConfig) -> tuple[list[str], str | None]:
    """``--source``/``--target`` as overrides, and the source directory to make: only for a source whose options
    have a ``path`` field (another source names its directory in its own options)."""
    choice = config.sender.source
    path_field = load_driver_class("event source", choice.type).config_class.model_fields.get("path")
    extra = [f"receiver.target={json.dumps(args.target or config.receiver.target)}"]
    if path_field is None:
        if args.source:
            raise ConfigError("--source", [f"the {choice.type!r} event source has no path option; give its"
                                           f" directory in its own options (sender.source.{choice.type}) instead"])
        return extra, None
    source = args.source or choice.options.get("path") or path_field.default
    if not isinstance(source, str):  # a required path the config does not give: validation names it
        return extra, None
    return [*extra, f"sender.source.{choice.type}.path={json.dumps(source)}"], source


def ledger(args: argparse.Namespace) -> int:
    """Report what a sender's ledger holds: counts per state, then the files not (yet) confirmed and every file
    that failed, was refused, given up (unconfirmed) or vanished, with the reason where one was recorded."""
    from hidra_core.sender.ledger import PROBLEMS, SEEN, SENT, Ledger

    config = _load(args)
    path = config.sender.ledger.path or default_ledger_path(source_driver(config, args.config or "<defaults>").root)
    if not os.path.exists(path):
        print(f"{path}: no ledger (the sender has not run with this config)")
        return 1
    book = Ledger(path, None, exclusive=False)
    try:
        counts = book.counts()
        print(f"{path}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) if counts else
              f"{path}: empty")
        for fid, state, attempts, reason in book.files((SEEN, SENT, *PROBLEMS), args.limit):
            print(f"  {state:<12} attempts={attempts:<3} {fid}" + (f"  ({reason})" if reason else ""))
    finally:
        book.close()
    return 0


def status(args: argparse.Namespace) -> int:
    """Show running processes from their REST API; exit 1 if one could not be asked."""
    from hidra_core.cli.status import run

    urls = list(args.urls) or _rest_urls(args, "sender", "receiver")
    try:
        return run(urls, _token(args), args.watch, args.count)
    except KeyboardInterrupt:
        return 0


def backfill(args: argparse.Namespace) -> int:
    """Send a tree that is already there through the running sender, with a progress bar."""
    from hidra_core.cli.backfill import run

    urls = [args.url] if args.url else _rest_urls(args, "sender")
    if not urls:
        raise HidraError("sender.rest is off in this config: give the running sender's REST URL with --url")
    try:
        return run(urls[0], _token(args), args.dir, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("hidra backfill: interrupted; the sender goes on with the backfill (hidra backfill again shows it)",
              file=sys.stderr)
        return 130


def _rest_urls(args: argparse.Namespace, *roles: str) -> list[str]:
    """The REST URLs of the config's ``roles`` where enabled (an address on every interface: loopback)."""
    config, urls = _load(args), []
    for role in roles:
        rest = getattr(config, role).rest
        if rest.enabled:
            host, port = rest.address.rsplit(":", 1)
            urls.append(f"http://{'127.0.0.1' if host in ('0.0.0.0', '*', '') else host}:{port}")
    return urls


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        with open(args.token_file) as f:
            return f.read().strip()
    return str(args.token) if args.token else None


def clients(args: argparse.Namespace) -> int:
    """Ask a running sender (HIDRA_STATUS on its com port) for its registrations and per-target counters."""
    import json

    import zmq

    config = _load(args)
    endpoint = args.com or config.sender.clients.com.replace("0.0.0.0", "127.0.0.1").replace("*", "127.0.0.1")
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.linger = 0
    try:
        if config.security.curve and "com" not in config.security.plain:
            _client_keys(config, args.key).client(sock)
        sock.connect(endpoint)
        sock.send_multipart([b"", str(os.getpid()).encode(), b"HIDRA_STATUS", b"[]"])
        if not sock.poll(int(args.timeout * 1000)):
            print(f"hidra: error: no answer from {endpoint} within {args.timeout} s", file=sys.stderr)
            return 1
        reply = sock.recv_multipart()
    finally:
        sock.close()
        context.term()
    if reply[0] != b"HIDRA_STATUS":
        print(f"hidra: error: {endpoint} answered {reply[0].decode(errors='replace')}", file=sys.stderr)
        return 1
    status = json.loads(reply[1])
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{len(status['registrations'])} registrations, {status['expired']} expired so far")
    for reg in status["registrations"]:
        print(f"  {reg['kind']:<8} app {reg['appid']:<10} {'+'.join(reg['delivery']):<9} open requests "
              f"{reg['open_requests']:<4} {', '.join(reg['members'])}")
    print("targets:")
    for t in status["targets"]:
        print(f"  {t['id']:<32} {'up' if t['connected'] else 'DOWN':<5} files {t['files']:<7} bytes {t['bytes']:<12}"
              f" skipped {t['skipped']:<6} abandoned {t['abandoned']:<4} queued {t['queued_messages']} msgs /"
              f" {t['queued_bytes']} B")
    return 0


def _client_keys(config: Any, name: str) -> Any:
    """The ``ClientKeys`` of a CLI command talking to this config's sender (its key: security.identity)."""
    from hidra_core.client import ClientKeys
    from hidra_core.security import KeyProblem

    sec = config.security
    try:
        return ClientKeys.from_dir(sec.keys_dir, name, sec.identity or "sender")
    except KeyProblem as exc:
        raise ConfigError("--key", [f"security.curve is on: {exc}"]) from None


def plugins(args: argparse.Namespace) -> int:
    rows = [("GROUP", "NAME", "DISTRIBUTION", "VERSION", "STATUS")]
    for s in [*discover(), *args.host.statuses]:
        rows.append((s.group, s.name, s.distribution, s.version, "ok" if s.loaded else f"FAILED: {s.error}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    return 0


def config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.overrides)
    given = config.model_fields_set & {"sender", "receiver"}
    role = args.role or (given.pop() if len(given) == 1 else "both")
    check_config(config, args.file, ("sender", "receiver") if role == "both" else (role,))
    if role != "sender" and config.receiver.workers > 1:
        from hidra_core.receiver.group import worker_endpoints

        worker_endpoints(config.receiver, args.file)
    print(f"{args.file}: OK ({'sender and receiver' if role == 'both' else role})")
    return 0


def config_show(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(_load(args).model_dump(mode="json"), sort_keys=False), end="")
    return 0


def config_reference(args: argparse.Namespace) -> int:
    from hidra_core.cli.reference import render

    print(render(), end="")
    return 0
