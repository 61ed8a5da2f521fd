"""A well-behaved hook plugin. It only touches events whose filename starts with ``fake-enrich``, and its error
observer only records, so loading it by accident changes nothing for other tests."""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping

from hidra_core import hookimpl

#: reports seen by ``hidra_on_plugin_error`` (bounded: every in-process CLI run in the suite may add some)
REPORTS: deque = deque(maxlen=200)


@hookimpl
def hidra_enrich_metadata(event: Any, metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if not event.filename.startswith("fake-enrich"):
        return None
    # "filename" is a protocol key: the host must drop it, keep "fake_detector".
    return {"fake_detector": "hidra-fake", "fake_size_seen": metadata.get("filesize"), "filename": "hijacked"}


@hookimpl
def hidra_on_plugin_error(report: Mapping[str, Any]) -> None:
    REPORTS.append(dict(report))
