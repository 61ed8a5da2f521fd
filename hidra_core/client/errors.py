"""Exceptions of the client library; the 4.x names are kept so that 4.x callers' ``except`` clauses still fit."""
from __future__ import annotations

from typing import Any

from hidra_core.errors import HidraError

__all__ = ["AuthenticationFailed", "ChecksumError", "CommunicationFailed", "HidraClientError", "VersionError"]


class HidraClientError(HidraError):
    """Base class of every error the client raises on purpose."""


class VersionError(HidraClientError):
    """The sender refused our protocol version (``VERSION_CONFLICT``); ``server_version`` says what it speaks."""

    def __init__(self, message: str, server_version: str | None = None) -> None:
        super().__init__(message)
        self.server_version = server_version


class AuthenticationFailed(HidraClientError):
    """The sender refused a target host or the requester (``NO_VALID_HOST``)."""


class CommunicationFailed(HidraClientError):
    """No reply in time, or a refusal (``NO_VALID_SIGNAL``, ``STORING_DISABLED``, ``CONNECTION_ALREADY_OPEN``)."""

    def __init__(self, message: str, reply: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class ChecksumError(HidraClientError):
    """A received file failed its integrity check (chunk or file checksum, or size); nothing of it is returned."""

    def __init__(self, message: str, file_id: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.file_id = file_id
        self.metadata = metadata
