"""HiDRA kernel: the public API for plugin authors and embedding applications.

Plugins import only from here (and ``hidra_core.testing`` in their tests), never from a kernel module, so that
the kernel's internal layout can change without breaking them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hidra_core._version import __version__
from hidra_core.client._keys import ClientKeys
from hidra_core.config import DriverChoice, RestConfig, load_model
from hidra_core.counters import Counters
from hidra_core.errors import ConfigError, DriverLoadFailure, HidraError, PathRefused, ProtocolError
from hidra_core.host.kernel import create_driver
from hidra_core.host.notify import Notifier, NotifyRelay
from hidra_core.host.plugins import PluginHost
from hidra_core.host.supervise import supervise
from hidra_core import ingest
from hidra_core.ingest import Ingest, IngestError
from hidra_core.interfaces import (EmptyConfig, EventSource, Fetcher, FileStat, SourceChanged, Transport,
                                   TreeSourceConfig, Writer, WriteTarget)
from hidra_core.markers import hookimpl, hookspec
from hidra_core.paths import SafeTree, split_checked
from hidra_core.rest.redact import hide_secrets
from hidra_core.rest.state import RecentProblems
from hidra_core.security import secure_socket
from hidra_core.streams import connect_stream, receive_batch
from hidra_core.types import (FILE, FRAME, KINDS, PULSE, SERIES_END, SERIES_START, FileEvent, PluginStatus,
                              file_id_of, payload_size)

__all__ = [
    "FILE", "FRAME", "KINDS", "PULSE", "SERIES_END", "SERIES_START",
    "ClientKeys", "ConfigError", "Counters", "DriverChoice", "DriverLoadFailure", "EmptyConfig", "EventSource",
    "Fetcher",
    "FileEvent",
    "FileStat", "HidraError", "Ingest", "IngestError", "Notifier", "NotifyRelay", "PathRefused", "PluginHost",
    "PluginStatus", "ProtocolError", "RecentProblems", "RestConfig", "RestServer", "RestView",
    "SafeTree", "SourceChanged",
    "Transport", "TreeSourceConfig", "WriteTarget", "Writer",
    "__version__", "connect_stream", "create_driver", "file_id_of", "hide_secrets", "hookimpl", "hookspec", "ingest",
    "load_model",
    "payload_size", "receive_batch", "secure_socket", "split_checked", "supervise",
]

if TYPE_CHECKING:  # pragma: no cover
    from hidra_core.rest.app import View as RestView
    from hidra_core.rest.server import RestServer

#: the REST server of a plugin's own long-running process; these load fastapi and uvicorn, so on first use only
_LAZY = {"RestServer": ("hidra_core.rest.server", "RestServer"), "RestView": ("hidra_core.rest.app", "View")}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hidra_core' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
