"""What each ``hidra`` subcommand does; ``cli.py`` builds the parser and handles errors."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

import yaml

from hidra_core.config import DriverChoice, InstanceConfig, load_config
from hidra_core.host.drivers import discover, load_driver_class
from hidra_core.host.kernel import create_driver

__all__ = ["clients", "config_check", "config_reference", "config_show", "ledger", "plugins", "receiver", "sender",
           "up"]

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
    from hidra_core.receiver.loop import Receiver

    return Receiver(_load(args), args.host, source_name=args.config or "<defaults>").run()


def up(args: argparse.Namespace) -> int:
    """Start a receiver and a sender as child processes and supervise them."""
    config = _load(args)
    source_type = config.sender.source.type
    source = args.source or config.sender.source.options.get("path") or "hidra-data/source"
    target = args.target or config.receiver.target
    extra = [f"sender.source.{source_type}.path={source}", f"receiver.target={target}"]
    for directory in (source, target):
        os.makedirs(directory, exist_ok=True)
    load_config(args.config, [*args.overrides, *extra])  # fail here, not in a child, if the result is invalid
    top = ["--log-level", args.log_level] if args.log_level else []
    rest = ["--config", args.config] if args.config else []
    for assignment in [*args.overrides, *extra]:
        rest += ["--set", assignment]
    children = {role: subprocess.Popen([sys.executable, "-m", "hidra_core", *top, role, *rest])
                for role in ("receiver", "sender")}
    log.info("hidra up: %s -> %s (Ctrl-C stops)", os.path.abspath(source), os.path.abspath(target))
    return _supervise(children)


def _supervise(children: dict[str, subprocess.Popen]) -> int:
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    while any(c.poll() is None for c in children.values()):
        for role, child in children.items():
            if child.poll() is not None and not stopping:
                log.error("the %s exited with status %s; stopping", role, child.returncode)
                code = child.returncode or 1
                forward(signal.SIGTERM, None)
        time.sleep(0.1)
    return code or max((c.returncode or 0) for c in children.values())


def ledger(args: argparse.Namespace) -> int:
    """Report what a sender's ledger holds: counts per state, then the files not (yet) confirmed and every file
    that failed, was refused, given up (unconfirmed) or vanished, with the reason where one was recorded."""
    from hidra_core.sender.ledger import PROBLEMS, SEEN, SENT, Ledger

    path = _load(args).sender.ledger.path
    if not os.path.exists(path):
        print(f"{path}: no ledger (the sender has not run with this config)")
        return 1
    book = Ledger(path, None)
    try:
        counts = book.counts()
        print(f"{path}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) if counts else
              f"{path}: empty")
        for fid, state, attempts, reason in book.files((SEEN, SENT, *PROBLEMS), args.limit):
            print(f"  {state:<12} attempts={attempts:<3} {fid}" + (f"  ({reason})" if reason else ""))
    finally:
        book.close()
    return 0


def clients(args: argparse.Namespace) -> int:
    """Ask a running sender (HIDRA_STATUS on its com port) for its registrations and per-target counters."""
    import json

    import zmq

    endpoint = args.com or _load(args).sender.clients.com.replace("0.0.0.0", "127.0.0.1").replace("*", "127.0.0.1")
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.linger = 0
    try:
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


def plugins(args: argparse.Namespace) -> int:
    rows = [("GROUP", "NAME", "DISTRIBUTION", "VERSION", "STATUS")]
    for s in [*discover(), *args.host.statuses]:
        rows.append((s.group, s.name, s.distribution, s.version, "ok" if s.loaded else f"FAILED: {s.error}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    return 0


def check_drivers(config: InstanceConfig, source: str) -> None:
    """Load every configured driver and validate its options, without opening anything."""
    s, r = config.sender, config.receiver
    cls = load_driver_class("event source", s.source.type)
    from hidra_core.config import validate_section

    validate_section(cls.config_class, s.source.options, source, f"sender.source.{s.source.type}")
    fetch = s.fetcher or DriverChoice(type=cls.default_fetcher)
    validate_section(load_driver_class("fetcher", fetch.type).config_class, fetch.options, source,
                     f"sender.fetcher.{fetch.type}")
    for name in r.writers:
        validate_section(load_driver_class("writer", name).config_class, r.writer_options(name), source,
                         f"receiver.{name}")
    for section, transports, endpoints in (
            ("sender", s.transports, (s.storage.data, s.storage.confirmations)),
            ("receiver", r.transports, (r.data, r.confirmations, r.status))):
        for scheme in {e.partition("://")[0] for e in endpoints} | set(transports):
            create_driver("transport", scheme, transports.get(scheme, {}), source, f"{section}.transports.{scheme}")


def config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.overrides)
    check_drivers(config, args.file)
    print(f"{args.file}: OK")
    return 0


def config_show(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(_load(args).model_dump(mode="json"), sort_keys=False), end="")
    return 0


def config_reference(args: argparse.Namespace) -> int:
    from hidra_core.cli.reference import render

    print(render(), end="")
    return 0
