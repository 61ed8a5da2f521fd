"""Pluggy markers for the ``hidra`` project name (hook prefix ``hidra_``, entry-point group ``hidra``)."""
from __future__ import annotations

import pluggy

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "hidra"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
