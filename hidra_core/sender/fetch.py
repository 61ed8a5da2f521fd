"""How the sender calls its fetcher: one place that knows the fetcher API's older forms."""
from __future__ import annotations

import inspect
import logging
from typing import Any

from hidra_core.interfaces import FileStat, SourceChanged
from hidra_core.types import FileEvent

__all__ = ["remove_checked"]

log = logging.getLogger(__name__)


def _takes_stat(fetcher: Any) -> bool:
    try:
        params = list(inspect.signature(fetcher.remove).parameters.values())
    except (TypeError, ValueError):
        return True
    return len(params) >= 2 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def remove_checked(fetcher: Any, event: FileEvent, stat: FileStat) -> None:
    """``fetcher.remove(event, stat)``; a fetcher written for the older ``remove(event)`` gets the version
    checked by the kernel first (it cannot tell whether a writer still has the data open)."""
    if _takes_stat(fetcher):
        fetcher.remove(event, stat)
        return
    now = fetcher.stat(event)
    if now is None:
        return
    if now.identity != stat.identity:
        raise SourceChanged(f"{event.file_id} changed after it was sent; not removed")
    fetcher.remove(event)
