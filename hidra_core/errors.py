"""Exceptions the kernel raises; each message names what is wrong and where."""
from __future__ import annotations

__all__ = ["ConfigError", "DriverLoadFailure", "HidraError", "PathRefused", "ProtocolError"]


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
