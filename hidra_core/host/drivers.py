"""stevedore managers for the driver roles: which implementation fills a role, chosen by name from config."""
from __future__ import annotations

import logging
from typing import Any

from stevedore import DriverManager
from stevedore.exception import MultipleMatches, NoMatches

from hidra_core.errors import DriverLoadFailure
from hidra_core.interfaces import EventSource, Fetcher, Transport, Writer
from hidra_core.host.plugins import _dist_name, _dist_version, entry_points_of
from hidra_core.types import PluginStatus

__all__ = ["ROLES", "build_driver", "discover", "load_driver_class"]

log = logging.getLogger(__name__)

#: role name -> (entry-point group, base class every driver of the role derives from)
ROLES: dict[str, tuple[str, type]] = {
    "event source": ("hidra.event_sources", EventSource),
    "fetcher": ("hidra.fetchers", Fetcher),
    "transport": ("hidra.transports", Transport),
    "writer": ("hidra.writers", Writer),
}


def _dist_of(group: str, ep: Any) -> str:
    # NOTE: entry points from stevedore's cache carry no ``dist``; look the provider up in importlib.metadata.
    matches = [c for c in entry_points_of(group) if c.name == ep.name and c.value == ep.value]
    return _dist_name(matches[0]) if matches else _dist_name(ep)


def _providers(namespace: str, extensions: list[Any]) -> str:
    return " and ".join(f"{_dist_of(namespace, e.entry_point)} ({e.entry_point.value})" for e in extensions)


def _error_on_conflict(namespace: str, name: str, extensions: list[Any]) -> Any:
    # NOTE: stevedore's own resolver names classes; operators need the distributions to uninstall one.
    raise MultipleMatches(f"{len(extensions)} distributions provide {name!r} in {namespace}: "
                          f"{_providers(namespace, extensions)}")


def load_driver_class(role: str, name: str) -> Any:  # a subclass of the role's base
    """The class registered as ``name`` for ``role``; ``DriverLoadFailure`` names role, name and cause."""
    group, base = ROLES[role]
    failures: list[str] = []

    def on_failure(_manager: Any, ep: Any, exc: BaseException) -> None:
        log.debug("%s driver %s failed to import", role, ep.name, exc_info=exc)
        failures.append(f"import of {ep.value} from {_dist_of(group, ep)} failed: {type(exc).__name__}: {exc}")

    try:
        manager = DriverManager(group, name, invoke_on_load=False, on_load_failure_callback=on_failure,
                                conflict_resolver=_error_on_conflict, on_missing_entrypoints_callback=None)
    except NoMatches:
        if failures:
            raise DriverLoadFailure(role, name, "; ".join(failures)) from None
        known = sorted({ep.name for ep in entry_points_of(group)})
        raise DriverLoadFailure(role, name, f"no installed distribution provides it in {group}"
                                f" (installed: {', '.join(known) or 'none'})") from None
    except MultipleMatches as exc:
        raise DriverLoadFailure(role, name, str(exc)) from None
    cls = manager.driver
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise DriverLoadFailure(role, name, f"{cls!r} is not a subclass of {base.__name__}")
    return cls


def build_driver(role: str, name: str, config: Any, **kwargs: Any) -> Any:
    """Instantiate a driver with its already validated config; errors from ``__init__`` name the driver."""
    cls = load_driver_class(role, name)
    try:
        return cls(config, **kwargs)
    except Exception as exc:
        raise DriverLoadFailure(role, name, f"raised on init: {type(exc).__name__}: {exc}") from exc


def discover() -> list[PluginStatus]:
    """Every driver entry point of every role: imported in isolation, checked, duplicates flagged."""
    statuses: list[PluginStatus] = []
    for group, base in ROLES.values():
        eps = entry_points_of(group)
        names = [ep.name for ep in eps]
        for ep in eps:
            error = _check_one(ep, base)
            if names.count(ep.name) > 1:
                others = [_dist_name(o) for o in eps if o.name == ep.name and o is not ep]
                error = error or f"name conflict: {ep.name!r} is also provided by {', '.join(others)}"
            statuses.append(PluginStatus(group, ep.name, _dist_name(ep), _dist_version(ep), ep.value,
                                         not error, error))
    return statuses


def _check_one(ep: Any, base: type) -> str:
    try:
        obj = ep.load()
    except Exception as exc:
        log.debug("entry point %s failed to import", ep.name, exc_info=True)
        return f"import failed: {type(exc).__name__}: {exc}"
    if not (isinstance(obj, type) and issubclass(obj, base)):
        return f"not a {base.__name__} subclass"
    return ""


def driver_config_class(role: str, name: str) -> Any:
    """The pydantic model of a driver's config section (for validation and the generated reference)."""
    return load_driver_class(role, name).config_class


