"""ACME's pluggy hooks (entry point ``acme`` in group ``hidra``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from hidra_core import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from hidra_core import FileEvent


@hookimpl
def hidra_enrich_metadata(event: FileEvent, metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Tag the files the ACME source reported; every other file is left alone."""
    if event.extra.get("detector") == "acme":
        return {"detector": "acme"}
    return None
