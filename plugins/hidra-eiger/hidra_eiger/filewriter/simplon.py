"""SIMPLON pieces of the FileWriter path without sockets: listing shapes, entry sanitising, series names, URLs.

eiger.md §3.3: a listing is a bare JSON list (API 1.5/1.6) or a value object ``{"value": [...]}`` whose value is
``null`` when no file exists (1.8); anything else is an error. Entries are relative paths; one that is absolute,
has ``..``, an empty component, a control character or a backslash is refused (never emitted, hidra4-protocol.md
§9 D5).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import quote

from hidra_core import PathRefused, split_checked

__all__ = ["LISTING_PATHS", "ListingError", "Listed", "parse_listing", "parse_value", "sanitise", "series_of",
           "data_url"]

#: where a DCU lists its files, in the order probed (eiger.md §3.3: 1.6, 1.8, newer 1.8 documentation)
LISTING_PATHS = ("files/", "files", "status/files", "status/files/")

_SERIES = re.compile(r"^(?P<series>.+)_(?:master|data_(?P<number>\d{6}))\.h5$")


class ListingError(ValueError):
    """A listing response of an unknown shape: the previous state is kept and the listing asked again later."""


@dataclass(frozen=True)
class Listed:
    """One sanitised listing entry: where it lies below ``/data`` and which series it belongs to."""

    name: str  # the entry as listed (``relative_path/filename``)
    relative_path: str
    filename: str
    series: str  # the entry without ``_master.h5`` / ``_data_NNNNNN.h5``; "" for other files
    number: int  # the data file's number; 0 for a master, -1 for other files

    @property
    def master(self) -> bool:
        return self.number == 0


def parse_value(body: Any) -> Any:
    """The ``value`` of a SIMPLON value object (a bare value is taken as is)."""
    return body.get("value") if isinstance(body, dict) else body


def parse_listing(body: Any) -> list[Any]:
    """The entries of a listing response: a list, ``{"value": list}``, ``{"value": null}`` (empty)."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and "value" in body:
        value = body["value"]
        if value is None:
            return []
        if isinstance(value, list):
            return value
        raise ListingError(f"listing value is a {type(value).__name__}, not a list or null")
    raise ListingError(f"listing is a {type(body).__name__} without a 'value' list"
                       if isinstance(body, dict) else f"listing is a {type(body).__name__}, not a list")


def sanitise(entry: Any) -> Listed:
    """The entry as a safe relative path, or ``PathRefused`` naming the problem."""
    if not isinstance(entry, str):
        raise PathRefused(f"entry {entry!r} is not a string")
    if entry.startswith("/"):
        raise PathRefused(f"entry {entry!r} is an absolute path")
    relative_path, _, filename = entry.rpartition("/")
    split_checked(relative_path, filename)  # NOTE: refuses "..", empty components, control characters, "\\"
    match = _SERIES.match(entry)
    if match is None:
        return Listed(entry, relative_path, filename, "", -1)
    number = match.group("number")
    return Listed(entry, relative_path, filename, match.group("series"), int(number) if number else 0)


def series_of(entries: Sequence[Listed]) -> dict[str, int]:
    """Per series the highest data file number listed (0: only its master)."""
    highest: dict[str, int] = {}
    for entry in entries:
        if entry.series:
            highest[entry.series] = max(highest.get(entry.series, 0), entry.number)
    return highest


def data_url(root: str, name: str) -> str:
    """The URL of a listed (sanitised) name below ``root`` (``http://dcu/data``), each component quoted."""
    return root.rstrip("/") + "/" + "/".join(quote(part, safe="") for part in name.split("/"))
