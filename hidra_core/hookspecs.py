"""Every pluggy hook a plugin may implement (project ``hidra``).

Drivers (event sources, fetchers, transports, writers) are *not* chosen here: stevedore does that by name.
These hooks are for taking part: start-up and shutdown, CLI subcommands, metadata enrichment, error observers.
Arguments are passed as keywords, so an implementation may accept any subset of them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from hidra_core.markers import hookspec

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from hidra_core.types import FileEvent

__all__ = [
    "hidra_add_options",
    "hidra_authorize_receiver",
    "hidra_enrich_metadata",
    "hidra_on_plugin_error",
    "hidra_register_commands",
    "hidra_shutdown",
    "hidra_startup",
]


@hookspec
def hidra_add_options(parser: argparse.ArgumentParser) -> None:
    """Fires once while the ``hidra`` CLI builds its top-level parser, before arguments are parsed.

    :param parser: the top-level parser; add global options with a plugin-specific prefix.

    Example::

        @hookimpl
        def hidra_add_options(parser):
            parser.add_argument("--acme-verbose", action="store_true", help="log every ACME notice")
    """


@hookspec
def hidra_register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Fires once while the CLI builds its subcommands; add your own ``hidra <command>``.

    :param subparsers: the ``add_subparsers()`` object. Set ``func`` as the default of your parser: it is
        called with the parsed namespace and its return value is the exit code.

    Example::

        @hookimpl
        def hidra_register_commands(subparsers):
            p = subparsers.add_parser("acme-ping", help="check that the ACME detector answers")
            p.set_defaults(func=lambda args: 0)
    """


@hookspec
def hidra_startup(kernel: Any) -> None:
    """Fires in a sender or receiver process after its config is validated and before any socket is bound.

    An exception here stops start-up (fail fast).

    :param kernel: the starting ``Sender`` or ``Receiver``; ``kernel.role`` is ``"sender"`` or ``"receiver"``
        and ``kernel.config`` its validated config.

    Example::

        @hookimpl
        def hidra_startup(kernel):
            log.info("ACME adapter active in the %s", kernel.role)
    """


@hookspec
def hidra_shutdown(kernel: Any) -> None:
    """Fires once when a sender or receiver has stopped (sockets closed, ledger flushed).

    :param kernel: the stopping ``Sender`` or ``Receiver``.

    Example::

        @hookimpl
        def hidra_shutdown(kernel):
            log.info("%s stopped", kernel.role)
    """


@hookspec
def hidra_enrich_metadata(event: FileEvent, metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Fires in the sender for every file, before its first chunk is sent.

    Return extra metadata keys to merge into every chunk's metadata, or ``None``. Keys that the wire protocol
    defines (``filename``, ``filesize``, ``chunk_number``, ...) cannot be overridden. An implementation that
    raises is reported through ``hidra_on_plugin_error`` and skipped; the file is still sent.

    :param event: the file's event.
    :param metadata: the protocol metadata computed so far (read-only).

    Example::

        @hookimpl
        def hidra_enrich_metadata(event, metadata):
            if event.filename.endswith(".acme"):
                return {"detector": "acme"}
            return None
    """


@hookspec(firstresult=True)
def hidra_authorize_receiver(host: str, request: Mapping[str, Any]) -> bool | None:
    """Fires in the sender whenever an analysis client's host is checked, before the configured whitelist.

    Return ``True`` to allow, ``False`` to refuse, or ``None`` to leave the decision to the whitelist
    (``sender.clients.whitelist``). firstresult: the first implementation that returns a bool decides. An
    implementation that raises refuses (fail closed) and is reported through ``hidra_on_plugin_error``. The
    sender's com port has a 1 s reply window: cache lookups and bound their time (e.g. LDAP netgroups).

    :param host: the host to check: a client's data host (FQDN), or the requesting peer's IP address.
    :param request: ``{"purpose": "requester" | "target" | "admin", "peer": requesting IP or None}``.

    Example::

        @hookimpl
        def hidra_authorize_receiver(host, request):
            if request["purpose"] == "target":
                return host in netgroups.members("beamline-p11-analysis")  # cached, bounded lookup
            return None
    """


@hookspec
def hidra_on_plugin_error(report: Mapping[str, Any]) -> None:
    """Fires when a plugin failed to load or one of its run-time hook implementations raised.

    :param report: ``{"plugin": name, "hook": hook name or "", "error": text}``.

    Example::

        @hookimpl
        def hidra_on_plugin_error(report):
            alerts.send(f"HiDRA plugin {report['plugin']} failed: {report['error']}")
    """
