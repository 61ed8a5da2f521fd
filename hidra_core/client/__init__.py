"""Client library for HiDRA senders, compatible on the wire and in its API with the 4.x ``Transfer`` client.

``Transfer`` is the 4.x-style object; ``stream()`` is the short form for analysis loops::

    for meta, data in hidra_core.client.stream("detpc01", pattern=r".*\\.cbf$"):
        ...
"""
from __future__ import annotations

from hidra_core.client._keys import ClientKeys
from hidra_core.client._stream import MODES, stream
from hidra_core.client._wire import CONNECTION_TYPES, PROTOCOL_VERSION
from hidra_core.client.errors import (
    AuthenticationFailed,
    ChecksumError,
    CommunicationFailed,
    HidraClientError,
    VersionError,
)
from hidra_core.client.transfer import DEFAULT_SIGNAL_TIMEOUT_S, Transfer

__all__ = [
    "AuthenticationFailed", "CONNECTION_TYPES", "ChecksumError", "ClientKeys", "CommunicationFailed",
    "DEFAULT_SIGNAL_TIMEOUT_S",
    "HidraClientError", "MODES", "PROTOCOL_VERSION", "Transfer", "VersionError", "stream",
]
