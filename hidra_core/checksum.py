"""Checksum algorithms named on the wire (``checksum_algorithm``)."""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import xxhash

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "new_hasher"]

# NOTE: xxh3_64 hashes at memory speed (well over 10 GB/s), so checksumming every chunk costs a few
# percent of a core at 1 GiB/s; md5/sha256 are accepted from peers but are several times slower.
DEFAULT_ALGORITHM = "xxh3_64"
ALGORITHMS: dict[str, Callable[[], Any]] = {
    "xxh3_64": xxhash.xxh3_64,
    "xxh64": xxhash.xxh64,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
}


def new_hasher(name: str) -> Any:
    """A streaming hasher (``update``/``hexdigest``) for ``name``; ``KeyError`` if unknown."""
    return ALGORITHMS[name]()
