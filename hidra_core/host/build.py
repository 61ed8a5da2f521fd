"""Building every driver a config names: the one code path of ``hidra config check``, the sender and the receiver.

Building instantiates each driver, so missing directories and unknown options fail here, but it never opens a
socket, a watch or a file: ``config check`` runs exactly this and nothing more.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import zmq

from hidra_core.config import DriverChoice, InstanceConfig
from hidra_core.errors import ConfigError
from hidra_core.host.drivers import load_driver_class
from hidra_core.host.kernel import Endpoints, create_driver
from hidra_core.security import Security

__all__ = ["ReceiverDrivers", "SenderDrivers", "build_receiver", "build_sender", "check_config", "check_separate",
           "default_ledger_path", "source_driver", "source_key"]

log = logging.getLogger(__name__)

LEDGER_DIR = "hidra-data/state"
_OLD_DEFAULT_LEDGER = os.path.join(LEDGER_DIR, "sender-ledger.sqlite")  # the single default ledger of 0.1.0


@dataclass(frozen=True)
class SenderDrivers:
    source: Any
    fetchers: list[Any]  # one per pipeline (sender.streams): each is only ever called from its worker's thread
    local: Any  # the local-target writer, or None
    endpoints: Endpoints

    @property
    def fetcher(self) -> Any:
        return self.fetchers[0]


@dataclass(frozen=True)
class ReceiverDrivers:
    writers: list[Any]
    endpoints: Endpoints


def source_driver(config: InstanceConfig, origin: str) -> Any:
    s = config.sender.source
    return create_driver("event source", s.type, s.options, origin, f"sender.source.{s.type}")


def source_key(choice: DriverChoice) -> str:
    """The config key that names the source's directory, for messages."""
    fields = load_driver_class("event source", choice.type).config_class.model_fields
    return f"sender.source.{choice.type}.path" if "path" in fields else f"sender.source.{choice.type} (root)"


def check_separate(first: tuple[str, str | None], second: tuple[str, str | None], origin: str) -> None:
    """``ConfigError`` if one directory is the other or inside it (symlinks resolved): files would loop."""
    (key_a, path_a), (key_b, path_b) = first, second
    if not path_a or not path_b:
        return
    real_a, real_b = os.path.realpath(path_a), os.path.realpath(path_b)
    if os.path.commonpath([real_a, real_b]) in (real_a, real_b):
        raise ConfigError(origin, [
            f"{key_a} {path_a!r} and {key_b} {path_b!r} overlap ({real_a} and {real_b}: one is inside the other);"
            " every stored copy would be picked up and sent again. Choose directories apart from each other"])


def _endpoints(context: zmq.Context | None, section: str, transports: dict[str, dict[str, Any]],
               keys: dict[str, str], origin: str, config: InstanceConfig) -> Endpoints:
    # NOTE: key files are read here, so `hidra config check` reports a missing or bad key as a run would
    security = Security(config.security, section, origin)
    endpoints = Endpoints(context, transports, origin, section, keys=keys, security=security)
    for scheme in transports:
        endpoints.driver(f"{scheme}://")
    for endpoint in keys:
        endpoints.driver(endpoint)
    return endpoints


def build_sender(config: InstanceConfig, origin: str, context: zmq.Context | None = None) -> SenderDrivers:
    cfg = config.sender
    source = source_driver(config, origin)
    fetch = cfg.fetcher or DriverChoice(type=source.default_fetcher)
    fetchers = [create_driver("fetcher", fetch.type, fetch.options, origin, f"sender.fetcher.{fetch.type}")
                for _ in range(cfg.stream_count if context is not None else 1)]
    local = None
    if cfg.local_target is not None:
        lt = cfg.local_target
        check_separate((source_key(cfg.source), source.root), ("sender.local_target.path", lt.path), origin)
        local = create_driver("writer", lt.writer, lt.options, origin, "sender.local_target.options", target=lt.path)
    keys = {cfg.clients.com: "sender.clients.com", cfg.clients.request: "sender.clients.request"}
    for i, (data, confirmations) in enumerate(cfg.storage.members):
        index = f"[{i}]" if len(cfg.storage.members) > 1 else ""
        keys.update({data: f"sender.storage.data{index}", confirmations: f"sender.storage.confirmations{index}"})
    if cfg.clients.control_shim:
        keys[cfg.clients.control_shim] = "sender.clients.control_shim"
    return SenderDrivers(source, fetchers, local, _endpoints(context, "sender", cfg.transports, keys, origin, config))


def build_receiver(config: InstanceConfig, origin: str, context: zmq.Context | None = None) -> ReceiverDrivers:
    cfg = config.receiver
    if not os.path.isdir(cfg.target):
        raise ConfigError(origin, [f"receiver.target: directory {cfg.target!r} does not exist"])
    writers = [create_driver("writer", name, cfg.writer_options(name), origin, f"receiver.{name}", target=cfg.target)
               for name in cfg.writers]
    keys = {cfg.data: "receiver.data", cfg.confirmations: "receiver.confirmations"}
    if cfg.status is not None:
        keys[cfg.status] = "receiver.status"
    return ReceiverDrivers(writers, _endpoints(context, "receiver", cfg.transports, keys, origin, config))


def check_config(config: InstanceConfig, origin: str, roles: tuple[str, ...] = ("sender", "receiver")) -> None:
    """Build every driver of ``roles`` as a run would; with both roles, the source must lie apart from the target."""
    source = build_sender(config, origin).source if "sender" in roles else None
    if "receiver" in roles:
        if source is not None:
            check_separate((source_key(config.sender.source), source.root),
                           ("receiver.target", config.receiver.target), origin)
        build_receiver(config, origin)


def default_ledger_path(source_root: str | None) -> str:
    """``hidra-data/state/ledger-<name>-<hash>.sqlite``: one ledger per source root (symlinks resolved), so the
    same config finds the same ledger again and another ``--source`` gets its own."""
    real = os.path.realpath(source_root) if source_root else ""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(real.rstrip("/")) or "source")[:40]
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:12]
    if os.path.exists(_OLD_DEFAULT_LEDGER):
        # NOTE: nothing is lost without it (sources are kept until confirmed and rescanned at start), but an
        # operator may want its history: say where it is and how to keep using it.
        log.warning("%s (the default ledger of earlier versions) is not used any more; set sender.ledger.path to it"
                    " to keep using it", _OLD_DEFAULT_LEDGER)
    return os.path.join(LEDGER_DIR, f"ledger-{name}-{digest}.sqlite")
