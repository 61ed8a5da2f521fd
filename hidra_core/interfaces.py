"""The abstract base classes every driver implements; stevedore picks the implementation by name."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from hidra_core.counters import Counters
from hidra_core.errors import HidraError
from hidra_core.types import FILE

if TYPE_CHECKING:  # pragma: no cover
    import zmq

    from hidra_core.types import FileEvent

__all__ = ["EmptyConfig", "EventSource", "Fetcher", "FileStat", "SourceChanged", "Transport", "TreeSourceConfig",
           "Writer", "WriteTarget"]


class EmptyConfig(BaseModel):
    """Config of a driver that takes no options: any key is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TreeSourceConfig(BaseModel):
    """The options every source that watches a directory tree takes, with one meaning, so that switching such
    sources (``inotify``, ``watchdog``, ``polling``) is changing ``type``; sources add their own fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field("hidra-data/source", description="directory tree to watch (must exist at start-up)")
    recursive: bool = Field(True, description="watch subdirectories, including ones created later")
    scan_at_start: bool = Field(True, description="report files that already exist when the sender starts")
    ignore: list[str] = Field(default_factory=list,
                              description="shell patterns of file names never sent, e.g. ['*.tmp', '.*']")
    follow_symlinks: bool = Field(False, description=(
        "send a symlink's target under the link's name, but only a regular file inside the watched tree; "
        "off: symlinks are skipped with a log line"))


@dataclass(frozen=True)
class FileStat:
    """What a fetcher knows about a file before its first chunk: size and times (ns since the epoch).

    ``identity`` is opaque text that must change whenever the data is replaced or rewritten, even with the same
    size and mtime (``cp -p``, ``rsync -t``): the ``file`` fetcher uses device, inode, ctime, size and mtime.
    A fetcher that leaves it empty gets one made of size and times.
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    identity: str = ""

    def __post_init__(self) -> None:
        if not self.identity:
            object.__setattr__(self, "identity", f"{self.size}:{self.mtime_ns}:{self.ctime_ns}")


class SourceChanged(HidraError):
    """``Fetcher.remove`` refused: the source is no longer what was sent, or someone still has it open.

    The source is kept; the kernel looks at it again later and sends it again if its identity changed.
    """


class EventSource(ABC):
    """Turns the outside world into ``FileEvent`` s. One instance per sender, polled by one thread.

    ``open`` and ``poll`` run in the source's own thread, which owns any socket the source creates.
    The first polls after ``open`` must report files that already existed (the start-up scan).
    """

    config_class: ClassVar[type[BaseModel]] = EmptyConfig
    #: fetcher used when the config does not name one
    default_fetcher: ClassVar[str] = "file"

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @property
    def root(self) -> str | None:
        """The directory or URL events are relative to, if the source has one (used to guard the ledger)."""
        return None

    @cached_property
    def counters(self) -> Counters:
        """What the source counts for ``/metrics`` (``self.counters.add("overflows")``), from any thread."""
        return Counters()

    def scan(self, rel: str) -> Iterator[FileEvent]:
        """Every event the source would report for the files already below ``rel`` (a "/"-separated directory
        below ``root``, "" for all), lazily: what ``hidra backfill`` sends. Called from a thread of its own, while
        the source runs: it may only read the tree and the config. A source without a tree cannot backfill."""
        raise NotImplementedError(f"the {type(self).__name__} source has no tree to backfill")

    @abstractmethod
    def open(self, context: zmq.Context) -> None:
        """Prepare (watches, sockets) in the polling thread."""

    @abstractmethod
    def poll(self, timeout_ms: int) -> list[FileEvent]:
        """Return the events that are ready, waiting at most ``timeout_ms`` for the first one."""

    @abstractmethod
    def close(self) -> None:
        """Release everything ``open`` acquired. Called from the polling thread."""


class Fetcher(ABC):
    """Produces the bytes of an event in chunks, and removes the source when the kernel says it is safe.

    A sender with several pipelines (``sender.streams``) makes one instance per pipeline, each called from its
    own thread only; ``remove`` may come to any instance, also for data another one read.
    """

    config_class: ClassVar[type[BaseModel]] = EmptyConfig

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @abstractmethod
    def stat(self, event: FileEvent) -> FileStat | None:
        """Size and times of the event's data, or ``None`` if it has vanished."""

    @abstractmethod
    def chunks(self, event: FileEvent, stat: FileStat, chunksize: int) -> Iterator[Any]:
        """Yield buffers of exactly ``chunksize`` bytes except the last (one empty buffer for an empty file).

        Buffers should be zero-copy views (``mmap``, ``memoryview``) for large chunks; the kernel hands them to
        ZeroMQ without copying and never reuses them. Raise ``OSError`` if the data changed size meanwhile.
        """

    def busy(self, event: FileEvent, stat: FileStat) -> bool:
        """True while some process may still be writing the data; the kernel asks again a little later.

        Called before every send. The default (never busy) suits sources whose data is complete when announced.
        """
        return False

    @abstractmethod
    def remove(self, event: FileEvent, stat: FileStat) -> None:
        """Delete the source. Only called after the storage target confirmed a durable copy of ``stat``'s version.

        Raise ``SourceChanged`` (and keep the source) when its identity is no longer ``stat.identity`` or someone
        still has it open for writing. Data that is already gone is not an error (removal may be repeated).
        """


class Transport(ABC):
    """Opens ZeroMQ sockets for endpoints of the URL schemes it is registered under."""

    config_class: ClassVar[type[BaseModel]] = EmptyConfig

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @abstractmethod
    def open_socket(self, context: zmq.Context, socket_type: int, endpoint: str, *, bind: bool,
                    hwm: int, prepare: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
        """Create, configure (linger, HWM, keepalive) and bind or connect a socket, in the calling thread.

        ``prepare`` is called with the configured socket *before* it binds or connects, e.g. to attach a
        socket monitor that must not miss the first connection.
        """

    @staticmethod
    def endpoint_of(socket: zmq.Socket) -> str:
        """The endpoint a bound socket really listens on (port 0 resolved)."""
        import zmq  # NOTE: only here, so that importing the interfaces stays cheap for plugin tooling

        return socket.getsockopt_string(zmq.LAST_ENDPOINT)


@dataclass(frozen=True)
class WriteTarget:
    """Where a received file goes: validated components below the receiver's root."""

    root: str
    relative_parts: tuple[str, ...]
    filename: str
    metadata: Mapping[str, Any]  # the message's wire metadata
    kind: str = FILE  # the message type (``hidra_core.types``)
    series: str = ""  # the series a series message belongs to

    @property
    def relative_name(self) -> str:
        return "/".join((*self.relative_parts, self.filename))

    @property
    def event_metadata(self) -> Mapping[str, Any]:
        """The source's metadata of the event (``FileEvent.metadata``), e.g. a frame's shape and encoding."""
        value = self.metadata.get("metadata")
        return value if isinstance(value, dict) else {}


class Writer(ABC):
    """Persists what a receiver gets. The receiver validates names; writers never see unsafe paths.

    ``open``/``write``/``close`` run in the receiving thread; ``commit`` runs in the commit thread with a batch
    of closed files and must make all of them durable and visible under their final names before returning.

    ``accepts`` names the message types the writer takes; the receiver hands each message only to the writers
    that take its type. A series writer (``series_start``, ``frame``, ``series_end``) gets every message of a
    series in the order sent; each one is a "file" here (``open`` .. ``commit``), confirmed once ``commit``
    returned, so ``commit`` must make each frame durable (a restarted receiver gets only unconfirmed ones again,
    and must continue the series where the durable part ends).
    """

    config_class: ClassVar[type[BaseModel]] = EmptyConfig
    accepts: ClassVar[frozenset[str]] = frozenset({FILE})
    #: seconds the commit thread may wait for more items once one of this writer's is queued: a writer whose commit
    #: costs the same for one item as for many (one flush of a shared series file) trades that much latency for
    #: fewer commits; 0 commits at once
    commit_linger_s: ClassVar[float] = 0.0

    def __init__(self, config: BaseModel, *, target: str) -> None:
        self.config = config
        self.target = target

    @abstractmethod
    def open(self, item: WriteTarget) -> Any:
        """Start a file; return a handle passed to the other methods."""

    @abstractmethod
    def write(self, handle: Any, data: Any) -> None:
        """Append one chunk to the file: a read-only buffer that nobody changes, which the writer may keep
        (without copying) until ``close`` returns."""

    @abstractmethod
    def close(self, handle: Any) -> None:
        """All chunks were written; the file is complete but not yet durable or visible."""

    @abstractmethod
    def commit(self, handles: Sequence[Any]) -> None:
        """Make every closed file in ``handles`` durable and visible under its final name."""

    def commit_each(self, handles: Sequence[Any]) -> list[BaseException | None]:
        """Like ``commit``, but each file succeeds or fails alone: per handle ``None`` (stored) or its error.

        The default commits the batch as a whole, so there one failure fails every file of the batch."""
        try:
            self.commit(handles)
        except Exception as exc:
            return [exc] * len(handles)
        return [None] * len(handles)

    @abstractmethod
    def abort(self, handle: Any) -> None:
        """Forget a file: remove whatever was written for it. Must not raise for a missing temp file."""

    def shutdown(self) -> None:
        """The receiver stops: release what the writer keeps open across files (a series stays resumable).

        Called once in the receiving thread after the last ``commit`` returned."""
        return None

    def cleanup(self, before: float) -> int:
        """Remove leftovers (temp files) of a predecessor that crashed; return how many.

        Called once at start-up in a background thread; ``before`` is the receiver's start time (epoch
        seconds): anything of this writer's own making older than that cannot belong to this process.
        """
        return 0
