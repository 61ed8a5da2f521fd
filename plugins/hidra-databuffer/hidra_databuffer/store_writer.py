"""The ``databuffer`` writer: pulse events (from the ``bsread`` source) into the local data buffer, served over HTTP.

``open``/``write``/``close`` run in the receiving thread: ``close`` copies the payload once (the receiver's views
may not outlive it) and checks the pulse metadata (/work/db-contract.md: channels with type, shape, encoding,
compression, present, offset, size). ``commit_each`` runs in the commit thread, the store's only appending thread:
a pulse becomes visible to queries there. The buffer lives in memory, so "durable" here means "stored in the
buffer": what the sender lets go of after the confirmation is what a query can still get until eviction.

With ``disk: {path: ...}`` pulses are also written through to the disk tier (``disk_tier.py``), which keeps a
longer window under its own bounds and is served again by a buffer restarted on the same path.

The query API starts with the receiver (``cleanup`` is its start-up call; the first ``open`` starts it too) and
stops in ``shutdown``.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from hidra_core import PULSE, ProtocolError, Writer, WriteTarget
from hidra_databuffer._decode import COMPRESSIONS, ENCODINGS, TYPES, BadValue, ChannelConfig, check_size
from hidra_databuffer.disk_tier import DiskTier
from hidra_databuffer.query_api import QueryLimits, QueryServer, build_app
from hidra_databuffer.store import Event, Pulse, Store

__all__ = ["DatabufferConfig", "DatabufferWriter", "DiskConfig", "parse_pulse"]

log = logging.getLogger(__name__)


class DiskConfig(BaseModel):
    """The optional disk tier of the data buffer (``receiver: {databuffer: {disk: {...}}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="directory of the disk tier (created if missing); a buffer started again on the"
                      " same path serves what is there")
    max_pulses: int = Field(1_000_000, ge=1000, description="pulses kept on disk (1 000 000 = about 2.8 h at 100"
                            " Hz); whole segments of 1000 pulse ids are evicted, oldest first, past it")
    max_bytes: int = Field(100 << 30, gt=0, description="payload bytes kept on disk; whole segments of 1000 pulse"
                           " ids are evicted, oldest first, past it (the newest segment always stays)")
    max_age_s: float | None = Field(None, gt=0, description="evict segments whose newest pulse was stored longer"
                                    " ago than this; null: no age bound")
    channels: list[str] = Field(["*"], min_length=1, description="channels written to disk, as shell-style"
                                " patterns (e.g. [\"*:FPICTURE\"] for images only); the others stay in memory only")


class DatabufferConfig(BaseModel):
    """Options of the ``databuffer`` writer (``receiver: {databuffer: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_pulses: int = Field(100_000, gt=0, description="pulses kept in the buffer (100 000 = about 17 min at"
                            " 100 Hz); the oldest pulse is evicted past it")
    max_bytes: int = Field(2 << 30, gt=0, description="bytes kept in memory (payloads as received plus bookkeeping);"
                           " the oldest pulses are evicted past it. A 0.5 MiB image at 100 Hz fills 2 GiB in 40 s")
    max_age_s: float | None = Field(None, gt=0, description="evict pulses stored longer ago than this; null: no"
                                    " age bound")
    http_host: str = Field("127.0.0.1", description="address the query API listens on")
    http_port: int = Field(10300, ge=0, le=65535, description="port of the query API (POST /query, GET /channels,"
                           " GET /status, POST /mapping); 0 picks a free one, named in the ready line")
    query_wait_s: float = Field(5.0, ge=0, description="a query whose end lies beyond the newest stored pulse waits"
                                " this long for it, then answers with what exists")
    max_query_pulses: int = Field(100_000, gt=0, description="a query range wider than this many pulse ids is"
                                  " refused with 413")
    max_query_bytes: int = Field(128 << 20, gt=0, description="a query whose values hold more bytes than this"
                                 " (decoded) is refused with 413; JSON inflates images 3-5 times")
    strict: bool = Field(False, description="unknown channels in a query: false answers them with empty configs"
                         " and data (the HDF5 writer skips them), true refuses the query with 404")
    disk: DiskConfig | None = Field(None, description="the optional disk tier (databuffer.md §12), written"
                                    " through from the memory ring; null: memory only")


@dataclass(eq=False)
class _Pending:
    """One pulse between ``open`` and ``commit``."""

    item: WriteTarget
    buffers: list[memoryview] = field(default_factory=list)
    pulse: Pulse | None = None


def _int(meta: Mapping[str, Any], key: str, where: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def _config(channel: Mapping[str, Any]) -> ChannelConfig:
    kind, shape = channel.get("type", "float64"), channel.get("shape", [1])
    encoding, compression = channel.get("encoding", "little"), channel.get("compression", "none") or "none"
    if not isinstance(kind, str) or kind not in TYPES:
        raise BadValue(f"type {kind!r} unknown (known: {sorted(TYPES)})")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise BadValue(f"shape {shape!r} is not a list of positive integers")
    if not isinstance(encoding, str) or not isinstance(compression, str) or encoding not in ENCODINGS or (
            compression not in COMPRESSIONS):
        raise BadValue(f"encoding {encoding!r} / compression {compression!r} unknown")
    return ChannelConfig(kind, tuple(shape), encoding, compression)


def parse_pulse(meta: Mapping[str, Any], blob: bytes, refused: dict[str, str]) -> Pulse:
    """The pulse of an event's metadata and payload. A malformed pulse raises ``ProtocolError``; a channel whose
    value does not fit its config is left out of the pulse (logged once per channel and problem in ``refused``)."""
    name = f"pulse_{meta.get('pulse_id')}"
    pid = _int(meta, "pulse_id", name)
    stamp, channels = meta.get("global_timestamp"), meta.get("channels")
    if not (isinstance(stamp, list) and len(stamp) == 2 and all(type(v) is int for v in stamp)):
        raise ProtocolError(f"{name}: global_timestamp must be [sec, ns], got {stamp!r}")
    if not isinstance(channels, list) or not all(isinstance(c, dict) for c in channels):
        raise ProtocolError(f"{name}: channels must be a list of objects")
    events: dict[str, Event | None] = {}
    absent: dict[str, ChannelConfig] = {}
    view = memoryview(blob)
    for channel in channels:
        cname = channel.get("name")
        if not isinstance(cname, str) or not cname:
            raise ProtocolError(f"{name}: a channel without a name: {channel!r}")
        offset, size = _int(channel, "offset", f"{name} {cname}"), _int(channel, "size", f"{name} {cname}")
        if offset + size > len(blob):
            raise ProtocolError(f"{name} {cname}: bytes {offset}..{offset + size} lie beyond the {len(blob)}-byte"
                                " payload")
        try:
            config = _config(channel)
            if channel.get("present", size > 0) is False or size == 0:
                events[cname], absent[cname] = None, config
                continue
            check_size(config, view[offset:offset + size])
        except BadValue as exc:
            if refused.get(cname) != str(exc):
                refused[cname] = str(exc)
                log.error("databuffer: channel %s refused from %s on (not stored while this lasts): %s", cname,
                          name, exc)
            continue
        refused.pop(cname, None)
        events[cname] = Event(config, offset, size)
    return Pulse(pid, stamp[0], stamp[1], blob, events, absent)


class DatabufferWriter(Writer):
    config_class = DatabufferConfig
    accepts = frozenset({PULSE})

    def __init__(self, config: DatabufferConfig, *, target: str) -> None:
        super().__init__(config, target=target)
        self.config: DatabufferConfig = config
        disk = config.disk
        self.disk = None if disk is None else DiskTier(disk.path, disk.max_pulses, disk.max_bytes, disk.max_age_s,
                                                       disk.channels)
        self.store = Store(config.max_pulses, config.max_bytes, config.max_age_s, disk=self.disk)
        limits = QueryLimits(config.query_wait_s, config.max_query_pulses, config.max_query_bytes, config.strict)
        self.server = QueryServer(build_app(self.store, limits), config.http_host, config.http_port)
        self._started = self._stopped = False
        self._start_lock = threading.Lock()
        self._refused: dict[str, str] = {}

    def start(self) -> None:
        """Start the query API unless it runs or was shut down (idempotent; raises if it cannot listen)."""
        with self._start_lock:
            # NOTE: the start-up thread may come late, after a receiver that failed at once already shut down
            if not self._started and not self._stopped:
                self.server.start()
                self._started = True

    @property
    def url(self) -> str:
        """The query URL (``.../query``), once started."""
        return f"{self.server.url}/query"

    # --- receiving thread -------------------------------------------------------------------------------------
    def open(self, item: WriteTarget) -> _Pending:
        if item.kind != PULSE:
            raise ProtocolError(f"{item.relative_name}: the databuffer writer takes pulse messages, not {item.kind!r}")
        self.start()
        return _Pending(item)

    def write(self, handle: _Pending, data: Any) -> None:
        handle.buffers.append(memoryview(data))

    def close(self, handle: _Pending) -> None:
        # NOTE: the one copy of a pulse: the receiver's buffers may not be kept beyond close
        blob = bytes(handle.buffers[0]) if len(handle.buffers) == 1 else b"".join(handle.buffers)
        handle.buffers = []
        handle.pulse = parse_pulse(handle.item.event_metadata, blob, self._refused)

    def abort(self, handle: _Pending) -> None:
        handle.buffers, handle.pulse = [], None

    # --- commit thread ----------------------------------------------------------------------------------------
    def commit(self, handles: Sequence[_Pending]) -> None:
        self.store.append(h.pulse for h in handles if h.pulse is not None)

    def commit_each(self, handles: Sequence[Any]) -> list[BaseException | None]:
        missing = [h.item.relative_name for h in handles if h.pulse is None]
        if missing:  # NOTE: close() never ran or failed for these: a receiver bug, never stored silently
            log.error("databuffer: commit of unclosed pulses %s", missing)
        self.commit(handles)
        return [None if h.pulse is not None else RuntimeError(f"{h.item.relative_name} was not closed")
                for h in handles]

    # --- life cycle -------------------------------------------------------------------------------------------
    def cleanup(self, before: float) -> int:
        # NOTE: the receiver's one start-up call: the query API is up before the first pulse comes
        self.start()
        return 0

    def shutdown(self) -> None:
        with self._start_lock:
            self.server.stop()
            self._started, self._stopped = False, True
        if self.disk is not None:
            self.disk.close()
