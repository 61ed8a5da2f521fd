"""Counters a driver keeps for the process's ``GET /statistics`` and Prometheus ``/metrics``.

An event source counts what only it can see (an inotify queue overflow, the rescan it costs, the frames a
detector's series skipped) with ``self.counters.add(name)``; the kernel publishes every counter as
``hidra_sender_source_<name>_total``, with its labels. Written by the source's thread, read by the router's
snapshot: a lock keeps the two apart (counters change rarely; a source counting every frame should keep its own
total and add it in batches).
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["Counters"]

_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
#: labelled values kept per counter: the most recently changed ones (a label per series would otherwise grow
#: without bound, and so would every Prometheus server scraping it)
KEEP = 50


class Counters:
    """Monotonic counters by name; a counter is plain or always has the same label names (e.g. ``series``)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._plain: dict[str, int] = {}
        self._labelled: dict[str, OrderedDict[tuple[tuple[str, str], ...], int]] = {}

    def add(self, name: str, n: int = 1, **labels: str) -> None:
        """Count ``n`` more of ``name`` (for ``labels``, e.g. ``series="scan_12"``); ``ValueError`` for a name
        that cannot be a metric name, a negative ``n`` or label names that differ from the counter's first ones."""
        if not _NAME.match(name) or not all(_NAME.match(key) for key in labels):
            raise ValueError(f"counter {name!r} {sorted(labels)}: names must match [a-z_][a-z0-9_]*")
        if n < 0:
            raise ValueError(f"counter {name!r}: counters only go up (n={n})")
        with self._lock:
            if not labels:
                if name in self._labelled:
                    raise ValueError(f"counter {name!r} has labels; give them")
                self._plain[name] = self._plain.get(name, 0) + n
                return
            key = tuple(sorted((k, str(v)) for k, v in labels.items()))
            values = self._labelled.setdefault(name, OrderedDict())
            if name in self._plain or (values and [k for k, _ in next(iter(values))] != [k for k, _ in key]):
                raise ValueError(f"counter {name!r}: labels {sorted(labels)} differ from its first ones")
            values[key] = values.pop(key, 0) + n
            while len(values) > self.keep:
                values.popitem(last=False)

    def snapshot(self) -> dict[str, Any]:
        """``{name: value}`` for plain counters, ``{name: [{"labels": {...}, "value": n}, ...]}`` for labelled
        ones (oldest change first); JSON-able, a copy."""
        with self._lock:
            out: dict[str, Any] = dict(self._plain)
            for name, values in self._labelled.items():
                out[name] = [{"labels": dict(key), "value": n} for key, n in values.items()]
            return out
