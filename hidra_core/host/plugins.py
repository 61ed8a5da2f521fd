"""The pluggy host: loads every ``hidra`` entry point in isolation and calls hooks through typed methods."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import pluggy

from hidra_core import hookspecs
from hidra_core.markers import PROJECT
from hidra_core.types import PluginStatus

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from hidra_core.types import FileEvent

__all__ = ["PluginHost", "entry_points_of", "is_selected"]

log = logging.getLogger(__name__)

# Keys the wire protocol owns: enrichment hooks may add keys but never change these.
_PROTECTED_KEYS = frozenset({
    "filename", "relative_path", "source_path", "filesize", "file_mod_time", "file_create_time", "chunksize",
    "chunk_number", "chunk_count", "last_chunk", "checksum_algorithm", "chunk_checksum", "file_checksum",
    "confirmation_required", "version", "htype", "series", "metadata",
})


def entry_points_of(group: str) -> list[Any]:
    """Installed entry points of ``group`` (``importlib.metadata``), in a stable order."""
    from importlib.metadata import entry_points

    return sorted(entry_points(group=group), key=lambda ep: (ep.name, _dist_name(ep)))


def _dist_name(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def _dist_version(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "?"


def is_selected(name: str, disabled: Iterable[str] = ()) -> bool:
    """Whether a ``hidra`` hook plugin may load: not in ``plugins.disabled`` and allowed by ``HIDRA_LOAD_PLUGINS``."""
    if name in set(disabled):
        return False
    allow = os.environ.get("HIDRA_LOAD_PLUGINS")
    if allow is None:
        return True
    return name in {n.strip() for n in allow.split(",") if n.strip()}


class PluginHost:
    """Owns one ``pluggy.PluginManager``; built per process (or per test), never a module global."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.statuses: list[PluginStatus] = []

    def load_entry_points(self, disabled: Iterable[str] = ()) -> list[PluginStatus]:
        """Import and register every selected ``hidra`` entry point; one failure never stops the others."""
        strict = os.environ.get("HIDRA_STRICT_PLUGINS") == "1"
        failed: list[PluginStatus] = []
        for ep in entry_points_of(PROJECT):
            if not is_selected(ep.name, disabled):
                log.debug("hook plugin %s not selected", ep.name)
                continue
            error = self._load_one(ep, strict)
            status = PluginStatus(PROJECT, ep.name, _dist_name(ep), _dist_version(ep), ep.value, not error, error)
            self.statuses.append(status)
            if error:
                log.warning("hook plugin %s from %s failed to load: %s", ep.name, status.distribution, error)
                failed.append(status)
        # NOTE: reported once all are loaded, so an observer plugin hears of failures of plugins sorted before it.
        for status in failed:
            self.on_plugin_error({"plugin": status.name, "hook": "", "error": status.error})
        return self.statuses

    def _load_one(self, ep: Any, strict: bool) -> str:
        try:
            plugin = ep.load()
        except Exception as exc:  # NOTE: a broken third-party plugin must not stop the others
            if strict:
                raise
            log.debug("loading %s failed", ep.name, exc_info=True)
            return f"import failed: {type(exc).__name__}: {exc}"
        if self.manager.get_plugin(ep.name) is not None:
            return f"another plugin already registered the name {ep.name!r}"
        try:
            self.register(plugin, name=ep.name)
        except pluggy.PluginValidationError as exc:
            if strict:
                raise
            return f"invalid hook implementation: {exc}"
        except ValueError as exc:  # pluggy: this object is already registered under another name
            if strict:
                raise
            return f"not registered: {exc}"
        return ""

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object; ``PluginValidationError`` (nothing registered) if a hookimpl is invalid."""
        try:
            self.manager.register(plugin, name=name)
            _refuse_unknown_hooks(self.manager, plugin)
        except pluggy.PluginValidationError as exc:
            if exc.plugin is not None and self.manager.is_registered(exc.plugin):
                self.manager.unregister(exc.plugin)
            raise

    # Typed hook calls. Start-up hooks fail fast; run-time hooks are isolated per implementation.

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        self.manager.hook.hidra_add_options(parser=parser)

    def register_commands(self, subparsers: Any) -> None:
        self.manager.hook.hidra_register_commands(subparsers=subparsers)

    def startup(self, kernel: Any) -> None:
        self.manager.hook.hidra_startup(kernel=kernel)

    def shutdown(self, kernel: Any) -> None:
        self._call_isolated("hidra_shutdown", kernel=kernel)

    def enrich_metadata(self, event: FileEvent, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Merged extra keys from every implementation; protocol keys are never overridden."""
        extra: dict[str, Any] = {}
        for name, result in self._call_isolated_named("hidra_enrich_metadata", event=event, metadata=metadata):
            if result is not None and not isinstance(result, Mapping):
                self._report(name, "hidra_enrich_metadata", f"returned {type(result).__name__}, not a mapping")
            elif result:
                extra.update({k: v for k, v in result.items() if k not in _PROTECTED_KEYS})
        return extra

    def authorize_receiver(self, host: str, request: Mapping[str, Any]) -> bool | None:
        """firstresult in pluggy's call order; an implementation that raises refuses (fail closed)."""
        hook = self.manager.hook.hidra_authorize_receiver
        for impl in reversed(hook.get_hookimpls()):  # pluggy calls the last registered first
            wanted = {k: v for k, v in (("host", host), ("request", request)) if k in impl.argnames}
            try:
                result = impl.function(**wanted)
            except Exception as exc:
                log.exception("authorisation hook of plugin %s raised; refusing %s", impl.plugin_name, host)
                self._report(impl.plugin_name, "hidra_authorize_receiver", repr(exc))
                return False
            if result is not None:
                return bool(result)
        return None

    @property
    def has_authorizers(self) -> bool:
        return bool(self.manager.hook.hidra_authorize_receiver.get_hookimpls())

    def on_plugin_error(self, report: Mapping[str, Any]) -> None:
        for impl in self.manager.hook.hidra_on_plugin_error.get_hookimpls():
            try:
                impl.function(report=report)
            except Exception:  # an observer that fails must not hide the original error
                log.exception("error observer %s raised", impl.plugin_name)

    @property
    def has_enrichers(self) -> bool:
        return bool(self.manager.hook.hidra_enrich_metadata.get_hookimpls())

    def _call_isolated(self, hook_name: str, **kwargs: Any) -> list[Any]:
        return [result for _name, result in self._call_isolated_named(hook_name, **kwargs)]

    def _call_isolated_named(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        results = []
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            if impl.hookwrapper or impl.wrapper:  # calling a wrapper directly would only create a generator
                self._report(impl.plugin_name, hook_name, "wrappers are not supported for run-time hooks")
                continue
            wanted = {k: kwargs[k] for k in impl.argnames}
            try:
                results.append((impl.plugin_name, impl.function(**wanted)))
            except Exception as exc:
                log.exception("hook %s of plugin %s raised", hook_name, impl.plugin_name)
                self.on_plugin_error({"plugin": impl.plugin_name, "hook": hook_name, "error": repr(exc)})
        return results

    def _report(self, plugin: str, hook_name: str, error: str) -> None:
        log.error("hook %s of plugin %s skipped: %s", hook_name, plugin, error)
        self.on_plugin_error({"plugin": plugin, "hook": hook_name, "error": error})


def _refuse_unknown_hooks(manager: pluggy.PluginManager, plugin: object) -> None:
    """Like ``check_pending()``, for one plugin: a hookimpl without a spec is a typo or needs a newer kernel."""
    unknown = sorted(caller.name for caller in manager.get_hookcallers(plugin) or []
                     if not caller.has_spec()
                     and any(not i.optionalhook for i in caller.get_hookimpls() if i.plugin is plugin))
    if unknown:
        raise pluggy.PluginValidationError(
            plugin, f"unknown hook(s) {', '.join(unknown)} in plugin {manager.get_name(plugin)!r}")
