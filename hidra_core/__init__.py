"""HiDRA kernel: the public API for plugin authors and embedding applications."""
from hidra_core._version import __version__
from hidra_core.errors import ConfigError, DriverLoadFailure, HidraError, PathRefused, ProtocolError
from hidra_core.interfaces import EmptyConfig, EventSource, Fetcher, FileStat, Transport, Writer, WriteTarget
from hidra_core.markers import hookimpl, hookspec
from hidra_core.types import FileEvent, PluginStatus

__all__ = [
    "ConfigError", "DriverLoadFailure", "EmptyConfig", "EventSource", "Fetcher", "FileEvent", "FileStat",
    "HidraError", "PathRefused", "PluginStatus", "ProtocolError", "Transport", "WriteTarget", "Writer",
    "__version__", "hookimpl", "hookspec",
]
