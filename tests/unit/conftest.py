"""Shared fixtures of the unit tests: no sockets, no sleeps, fresh plugin hosts."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never inherit the caller's plugin selection: every fake plugin is visible, failures not fatal."""
    monkeypatch.delenv("HIDRA_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("HIDRA_STRICT_PLUGINS", raising=False)
