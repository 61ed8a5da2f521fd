"""pytest fixtures for HiDRA plugin authors (registered as the ``hidra`` pytest11 plugin)."""
from __future__ import annotations
