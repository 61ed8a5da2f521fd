"""``GET /config``: the effective configuration with its secrets hidden."""
from __future__ import annotations

import re
from typing import Any

from hidra_core.config import InstanceConfig

__all__ = ["HIDDEN", "hide_secrets", "redacted"]

HIDDEN = "***"
#: keys whose values are hidden wherever they are, whether they came from $env/$file or not
_SECRET_NAME = re.compile(r"token|password|passwd|secret", re.IGNORECASE)


def redacted(config: InstanceConfig, role: str) -> dict[str, Any]:
    """The config of ``role``'s process (its own section, plugins, log level) as JSON values; every value given as
    ``$env``/``$file``, or under a key named like a secret, is ``***``."""
    dumped = config.model_dump(mode="json")
    other = "receiver" if role == "sender" else "sender"
    shown = {key: value for key, value in dumped.items() if key != other}
    result: dict[str, Any] = _hide(shown, "", config.secret_keys)
    return result


def hide_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a plugin service's config as JSON values) with every value under a key named like a secret
    shown as ``***``."""
    result: dict[str, Any] = _hide(values, "", frozenset())
    return result


def _hide(value: Any, key: str, secrets: frozenset[str]) -> Any:
    if key in secrets or (value is not None and _SECRET_NAME.search(key.rpartition(".")[2])):
        return HIDDEN
    if isinstance(value, dict):
        return {k: _hide(v, f"{key}.{k}" if key else str(k), secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v, f"{key}.{i}", secrets) for i, v in enumerate(value)]
    return value
