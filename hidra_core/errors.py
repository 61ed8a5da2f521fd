"""Exceptions the kernel raises; each message names what is wrong and where."""
from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "DriverLoadFailure", "HidraError", "PathRefused", "ProtocolError", "shown"]

#: characters of a peer's value that an error message quotes
SHOWN = 200


def shown(value: Any) -> str:
    """``repr(value)`` cut to about ``SHOWN`` characters, for error messages about what a peer sent.

    # NOTE: a text or bytes value is cut before ``repr``: a 1 GiB name would otherwise make a 4 GiB message
    (a log line, a reply), and an error message must not cost more than the bad input.
    """
    if isinstance(value, (str, bytes)) and len(value) > SHOWN:
        return f"{value[:SHOWN]!r}... ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}..."


class HidraError(Exception):
    """Base class of every error the kernel raises on purpose."""


class ConfigError(HidraError):
    """A configuration file or override is invalid; the message names file, section and key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


class DriverLoadFailure(HidraError):
    """The driver chosen by configuration is missing, broken or refused its config."""

    def __init__(self, role: str, name: str, cause: str) -> None:
        self.role = role
        self.name = name
        self.cause = cause
        super().__init__(f"cannot load {role} driver {name!r}: {cause}")


class ProtocolError(HidraError):
    """A wire message could not be decoded; the message says which field is wrong."""


class PathRefused(ProtocolError):
    """A received file would be written outside the receiver's root, or its name is not a plain name."""
