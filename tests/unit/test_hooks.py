"""One test per hook (convention 18): each registers an in-process plugin and calls the typed PluginHost method.

``test_every_hook_has_a_test`` fails when a hookspec is added without a ``test_hook_<name>`` here.
"""
from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import pytest

from hidra_core import FileEvent, hookimpl
from hidra_core.host.plugins import PluginHost


def _hook_names() -> list[str]:
    return sorted(n for n in dir(PluginHost().manager.hook) if n.startswith("hidra_"))


def test_every_hook_has_a_test() -> None:
    names = _hook_names()
    assert names, "no hooks found: hookspecs not added?"
    missing = [n for n in names if not callable(globals().get(f"test_hook_{n}"))]
    assert missing == [], f"hooks without a test_hook_<name> in {__name__}: {missing}"


def test_every_hook_test_names_an_existing_hook() -> None:
    names = set(_hook_names())
    stale = [t for t in globals() if t.startswith("test_hook_") and t[len("test_hook_"):] not in names]
    assert stale == []


class Recorder:
    """Records the keyword arguments of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []


def _kernel(role: str = "sender") -> Any:
    return SimpleNamespace(role=role, config=object())


@pytest.fixture
def host() -> PluginHost:
    return PluginHost()


def test_hook_hidra_add_options(host: PluginHost) -> None:
    class Plugin(Recorder):
        @hookimpl
        def hidra_add_options(self, parser: argparse.ArgumentParser) -> None:
            self.calls.append(("add_options", {"parser": parser}))
            parser.add_argument("--acme-verbose", action="store_true")

    plugin = Plugin()
    host.register(plugin, name="acme")
    parser = argparse.ArgumentParser(prog="hidra")
    host.add_options(parser)
    assert plugin.calls == [("add_options", {"parser": parser})]
    assert parser.parse_args(["--acme-verbose"]).acme_verbose is True


def test_hook_hidra_register_commands(host: PluginHost) -> None:
    class Plugin(Recorder):
        @hookimpl
        def hidra_register_commands(self, subparsers: Any) -> None:
            self.calls.append(("register_commands", {"subparsers": subparsers}))
            p = subparsers.add_parser("acme-ping")
            p.add_argument("--count", type=int, default=1)
            p.set_defaults(func=lambda args: 40 + args.count)

    plugin = Plugin()
    host.register(plugin, name="acme")
    parser = argparse.ArgumentParser(prog="hidra")
    subs = parser.add_subparsers(dest="command", required=True)
    host.register_commands(subs)
    assert plugin.calls == [("register_commands", {"subparsers": subs})]
    args = parser.parse_args(["acme-ping", "--count", "2"])
    assert args.command == "acme-ping" and args.func(args) == 42


def test_hook_hidra_startup(host: PluginHost) -> None:
    class Plugin(Recorder):
        @hookimpl
        def hidra_startup(self, kernel: Any) -> None:
            self.calls.append(("startup", {"kernel": kernel}))

    class Failing:
        @hookimpl
        def hidra_startup(self, kernel: Any) -> None:
            raise RuntimeError(f"licence server unreachable for the {kernel.role}")

    plugin = Plugin()
    host.register(plugin, name="observer")
    kernel = _kernel()
    host.startup(kernel)
    assert plugin.calls == [("startup", {"kernel": kernel})]

    host.register(Failing(), name="failing")
    with pytest.raises(RuntimeError, match="licence server unreachable for the sender"):
        host.startup(kernel)  # start-up hooks fail fast


def test_hook_hidra_shutdown(host: PluginHost) -> None:
    class Plugin(Recorder):
        @hookimpl
        def hidra_shutdown(self, kernel: Any) -> None:
            self.calls.append(("shutdown", {"kernel": kernel}))

    class Failing:
        @hookimpl
        def hidra_shutdown(self, kernel: Any) -> None:
            raise RuntimeError("flush failed")

    class Observer(Recorder):
        @hookimpl
        def hidra_on_plugin_error(self, report: Any) -> None:
            self.calls.append(("error", dict(report)))

    first, last, observer = Plugin(), Plugin(), Observer()
    host.register(first, name="first")
    host.register(Failing(), name="failing")
    host.register(last, name="last")
    host.register(observer, name="observer")
    kernel = _kernel("receiver")
    host.shutdown(kernel)  # isolated: one failing impl does not stop the others
    assert first.calls == [("shutdown", {"kernel": kernel})]
    assert last.calls == [("shutdown", {"kernel": kernel})]
    [(_, report)] = observer.calls
    assert report["plugin"] == "failing" and report["hook"] == "hidra_shutdown" and "flush failed" in report["error"]


def test_hook_hidra_enrich_metadata(host: PluginHost) -> None:
    class Plugin(Recorder):
        @hookimpl
        def hidra_enrich_metadata(self, event: FileEvent, metadata: Any) -> Any:
            self.calls.append(("enrich", {"event": event, "metadata": metadata}))
            return {"detector": "acme"} if event.filename.endswith(".acme") else None

    class EventOnly(Recorder):
        @hookimpl
        def hidra_enrich_metadata(self, event: FileEvent) -> Any:  # impls may take a subset of the arguments
            self.calls.append(("enrich", {"event": event}))
            return {"seen_by": "event-only"}

    plugin, subset = Plugin(), EventOnly()
    host.register(plugin, name="acme")
    host.register(subset, name="subset")
    assert host.has_enrichers
    event, metadata = FileEvent("/src", "", "frame.acme"), {"filename": "frame.acme", "filesize": 3}
    assert host.enrich_metadata(event, metadata) == {"detector": "acme", "seen_by": "event-only"}
    assert plugin.calls == [("enrich", {"event": event, "metadata": metadata})]
    assert subset.calls == [("enrich", {"event": event})]
    assert host.enrich_metadata(FileEvent("/src", "", "x.h5"), {}) == {"seen_by": "event-only"}


def test_enrich_metadata_without_implementations(host: PluginHost) -> None:
    assert not host.has_enrichers
    assert host.enrich_metadata(FileEvent("/src", "", "x"), {}) == {}


def test_hook_hidra_on_plugin_error(host: PluginHost) -> None:
    class Plugin(Recorder):
        @hookimpl
        def hidra_on_plugin_error(self, report: Any) -> None:
            self.calls.append(("error", {"report": report}))

    class Raising:
        @hookimpl
        def hidra_on_plugin_error(self, report: Any) -> None:
            raise RuntimeError("alerting down")

    plugin = Plugin()
    host.register(Raising(), name="raising")
    host.register(plugin, name="observer")
    report = {"plugin": "acme", "hook": "hidra_enrich_metadata", "error": "ValueError('x')"}
    host.on_plugin_error(report)  # a raising observer neither propagates nor stops the others
    assert plugin.calls == [("error", {"report": report})]


def test_hook_hidra_authorize_receiver(host: PluginHost) -> None:
    from hidra_core.sender.clients.hosts import AccessPolicy, HostResolver

    class Netgroup(Recorder):
        @hookimpl
        def hidra_authorize_receiver(self, host: str, request: Any) -> bool | None:
            self.calls.append((host, dict(request)))
            if request["purpose"] == "target":
                return host == "analysis01.example"
            return None

    class Broken:
        @hookimpl
        def hidra_authorize_receiver(self, host: str) -> bool | None:
            raise RuntimeError("LDAP down")

    plugin = Netgroup()
    host.register(plugin, name="netgroup")
    assert host.authorize_receiver("analysis01.example", {"purpose": "target", "peer": None}) is True
    assert host.authorize_receiver("other.example", {"purpose": "target", "peer": None}) is False
    assert host.authorize_receiver("10.0.0.1", {"purpose": "requester", "peer": "10.0.0.1"}) is None
    assert plugin.calls[0] == ("analysis01.example", {"purpose": "target", "peer": None})

    # Wired into the sender's access policy: the plugin decides before the whitelist ("nobody" here).
    resolver = HostResolver(0.2)
    policy = AccessPolicy(resolver, ["nowhere.invalid"], [], True, host.authorize_receiver)
    assert policy.target_allowed("analysis01.example", "10.0.0.1") is True
    assert policy.target_allowed("other.example", "10.0.0.1") is False

    host.register(Broken(), name="broken")  # called first (registered last) and raises: fail closed
    assert host.authorize_receiver("analysis01.example", {"purpose": "target", "peer": None}) is False
