"""The ``eiger`` event source: the files an EIGER DCU's FileWriter holds in its RAM (eiger.md §3), found by polling
its listing over HTTP; the ``http`` fetcher downloads them and deletes them once storage proved a durable copy.

* Change detection (§3.4): a state per listed name; a name that leaves the listing forgets its state, so a name
  that comes back (reused after a delete, ``clear`` or a reboot) is new work. No other history is kept.
* Partial files (§3.6): a data file is taken once a later data file of its series is listed, or once two ``HEAD``
  s one poll apart agree (size, ETag, Last-Modified): a series that ended stops growing, and so passes that test
  one poll later. "The series ended" alone is not trusted for data files: the detector state says nothing about a
  file the DCU still flushes. A master is taken once the detector's ``state`` is ``idle`` or ``ready`` (or the
  DCU has no such status) *and* two heads agree. A copy that went stale all the same is caught by the fetcher
  (its identity changed: not deleted, sent again).
* Files listed at start are the first work. Every listed, taken name is announced again every ``reannounce_s``:
  the kernel skips versions it already has (ledger) and so retries downloads and deletes that failed while the
  file stays listed.
* A name that leaves the listing before HiDRA had a complete copy and that HiDRA did not delete was wiped (a DCU
  reboot or ``filewriter/command/clear``): reported by name at ERROR and counted (``stats["lost"]``).
* Low buffer: ``detector/status/builder/dcu_buffer_free`` (percent) below ``low_buffer_percent`` logs a WARNING,
  once until it has recovered.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import zmq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hidra_core import EventSource, FileEvent, PathRefused

from hidra_eiger.filewriter.dcu import Dcu, Head
from hidra_eiger.filewriter.progress import progress
from hidra_eiger.filewriter.simplon import Listed, ListingError, data_url, sanitise, series_of
from hidra_eiger.filewriter.web import HttpStatusError

__all__ = ["EigerFileWriterConfig", "EigerFileWriterSource"]

log = logging.getLogger(__name__)

_ENDED = ("idle", "ready")


class EigerFileWriterConfig(BaseModel):
    """Options of the ``eiger`` source (``sender.source: {type: eiger, eiger: {url: ...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="the DCU's address, http://host[:port]; files are read from <url>/data/<path>")
    api_version: str | None = Field(None, description=(
        "SIMPLON API version (e.g. 1.8.0); default: discovered from /detector/api/version/ at start and after"
        " errors. Setting it only overrides the discovery"))
    prefixes: tuple[str, ...] = Field((), description=(
        "only listed paths that start with one of these (e.g. current/raw/) are taken; default: all"))
    poll_s: float = Field(0.5, gt=0, description="seconds between two listings of the DCU's files")
    reannounce_s: float = Field(10.0, gt=0, description=(
        "seconds between announcements of every listed file again, so that failed downloads and deletes are "
        "retried while the file stays listed (versions already stored are skipped)"))
    max_backoff_s: float = Field(30.0, gt=0, description="longest wait between listings after failures")
    buffer_check_s: float = Field(5.0, gt=0, description="seconds between two reads of dcu_buffer_free")
    low_buffer_percent: float = Field(20.0, ge=0, le=100, description=(
        "a WARNING is logged when the DCU's free buffer (dcu_buffer_free) drops below this percentage"))
    connect_timeout_s: float = Field(3.0, gt=0, description="seconds to wait for a connection to the DCU")
    read_timeout_s: float = Field(10.0, gt=0, description="seconds a DCU's answer may take")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.rstrip("/")
        scheme, sep, rest = value.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ValueError(f"must be http://host[:port] (no path), got {value!r}")
        return value


@dataclass(eq=False)
class _Entry:
    listed: Listed
    head: Head | None = None  # the last HEAD, for the stability check
    taken: bool = False  # announced to the kernel


class EigerFileWriterSource(EventSource):
    config_class = EigerFileWriterConfig
    default_fetcher = "http"
    config: EigerFileWriterConfig

    def __init__(self, config: EigerFileWriterConfig) -> None:
        super().__init__(config)
        self._dcu: Dcu | None = None
        self._entries: dict[str, _Entry] = {}  # listed name -> state, in listing order
        self._refused: set[str] = set()  # listed names refused (logged once while they stay listed)
        self._next_poll = self._next_announce = self._next_buffer = 0.0
        self._backoff = config.poll_s
        self._low = False
        self.stats = {"listings": 0, "listing_errors": 0, "taken": 0, "reannounced": 0, "refused": 0, "lost": 0,
                      "low_buffer": 0, "head_errors": 0}

    @property
    def root(self) -> str:
        return f"{self.config.url}/data"

    def open(self, context: zmq.Context) -> None:
        cfg = self.config
        self._dcu = Dcu(cfg.url, cfg.api_version, (cfg.connect_timeout_s, cfg.read_timeout_s))
        progress.watch(self.root)
        self._next_poll = self._next_announce = self._next_buffer = 0.0
        try:
            self._dcu.discover()
        except OSError as exc:  # NOTE: a DCU that is off at start is asked again at every poll
            log.warning("eiger: %s not reachable yet (%s); trying again", cfg.url, exc)

    def close(self) -> None:
        if self._dcu is not None:
            self._dcu.close()
            self._dcu = None
            progress.unwatch(self.root)

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        assert self._dcu is not None, "open() first"
        now = time.monotonic()
        if now < self._next_poll:
            time.sleep(min(self._next_poll - now, timeout_ms / 1000))
            return []
        try:
            events = self._round(self._dcu, now)
        except (OSError, ListingError) as exc:
            self._failed(self._dcu, exc)
            return []
        self._backoff = self.config.poll_s
        self._next_poll = now + self.config.poll_s
        return events

    def _failed(self, dcu: Dcu, exc: Exception) -> None:
        """Keep every state; ask again after a back-off, discovering the version and the listing anew."""
        self.stats["listing_errors"] += 1
        log.warning("eiger: reading %s failed: %s; files kept as they were, next try in %.1f s", self.config.url,
                    exc, self._backoff)
        dcu.forget()
        self._next_poll = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.max_backoff_s)

    def _round(self, dcu: Dcu, now: float) -> list[FileEvent]:
        listed = self._listed(dcu.listing())
        self.stats["listings"] += 1
        self._forget_unlisted(set(e.name for e in listed))
        for entry in listed:
            if entry.name not in self._entries:
                self._entries[entry.name] = _Entry(entry)
        taken = self._take(dcu, series_of(listed))
        if now >= self._next_announce:
            self._next_announce = now + self.config.reannounce_s
            fresh = {id(entry) for entry in taken}
            again = [e for e in self._entries.values() if e.taken and id(e) not in fresh]
            self.stats["reannounced"] += len(again)
            taken += again
        if now >= self._next_buffer:
            self._next_buffer = now + self.config.buffer_check_s
            self._check_buffer(dcu)
        return [self._event(dcu, entry) for entry in taken]

    def _listed(self, raw: list[Any]) -> list[Listed]:
        """The sanitised entries that pass the prefix filter; refused ones are logged once while listed."""
        out, refused = [], set()
        for item in raw:
            try:
                entry = sanitise(item)
            except PathRefused as exc:
                key = repr(item)
                refused.add(key)
                if key not in self._refused:
                    self.stats["refused"] += 1
                    log.warning("eiger: refusing listed file %s of %s: %s (never sent)", key, self.config.url, exc)
                continue
            if not self.config.prefixes or entry.name.startswith(self.config.prefixes):
                out.append(entry)
        self._refused = refused
        return out

    def _forget_unlisted(self, names: set[str]) -> None:
        lost = []
        for name in [n for n in self._entries if n not in names]:
            del self._entries[name]
            complete, deleted = progress.forget(self.root, name)
            if not (complete or deleted):
                lost.append(name)
        if lost:
            self.stats["lost"] += len(lost)
            log.error("eiger: %d files vanished from %s before HiDRA had a complete copy (a DCU reboot or a "
                      "filewriter clear?); LOST: %s", len(lost), self.config.url, ", ".join(lost))

    def _take(self, dcu: Dcu, highest: dict[str, int]) -> list[_Entry]:
        """Entries that became complete this round, in listing order (those listed at start come first)."""
        ready: list[_Entry] = []
        state: str | None = None
        for entry in self._entries.values():
            if entry.taken:
                continue
            listed, previous = entry.listed, entry.head
            try:
                entry.head = head = dcu.head(listed.name)
            except HttpStatusError as exc:  # NOTE: this file only; a DCU that does not answer fails the round
                self.stats["head_errors"] += 1
                log.info("eiger: %s; looked at again next round", exc)
                continue
            if head is None:
                continue  # NOTE: listed but not (yet) served; looked at again next round
            if listed.master:
                if state is None:
                    state = str(dcu.status("detector", "state") or "unavailable")
                complete = head == previous and (state in _ENDED or state == "unavailable")
            else:
                complete = (listed.series and listed.number < highest.get(listed.series, 0)) or head == previous
            if complete:
                entry.taken = True
                self.stats["taken"] += 1
                ready.append(entry)
        return ready

    def _event(self, dcu: Dcu, entry: _Entry) -> FileEvent:
        listed = entry.listed
        size = entry.head.size if entry.head is not None else None
        version = dcu.version or ""
        series = listed.series
        return FileEvent(self.root, listed.relative_path, listed.filename, series=series, size=size,
                         metadata={"series": series, "api_version": version},
                         extra={"series": series, "api_version": version, "content_length": size,
                                "url": data_url(self.root, listed.name)})

    def _check_buffer(self, dcu: Dcu) -> None:
        value = dcu.status("detector", "builder/dcu_buffer_free")
        if not isinstance(value, (int, float)):
            return
        limit = self.config.low_buffer_percent
        if value < limit and not self._low:
            self._low = True
            self.stats["low_buffer"] += 1
            log.warning("eiger: the DCU %s has only %.1f %% of its buffer free (below %.0f %%): acquisition stalls"
                        " when it is full; is the storage path keeping up?", self.config.url, value, limit)
        elif value >= limit and self._low:
            self._low = False
            log.info("eiger: the DCU %s buffer recovered: %.1f %% free", self.config.url, value)
