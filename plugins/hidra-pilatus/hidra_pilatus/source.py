"""The ``pilatus`` event source: a PILATUS camserver's CBF and TIFF images, each with its header as metadata.

It does not watch by itself: it wraps another event source (``watch``: ``inotify`` on a local disk or ramdisk,
``polling`` on a network share where inotify never fires), built by name through the kernel, so an image is
reported exactly when that source reports a file: closed after writing, or renamed into place. The camserver's
temporary names (``temp_patterns``) are never reported, so neither of its write patterns (write in place, or
write a temporary name and rename it) can send an image half-written.

For each image the source reads the first ``max_header_bytes`` in its own thread and lets fabio parse the
header (``hidra_pilatus.header``); the frame number and the series come from the file name. An image whose header
cannot be read is reported all the same, with ``metadata_error`` saying why (counted in ``stats``).
"""
from __future__ import annotations

import fnmatch
import logging
import os
import re
import time
from collections import deque
from dataclasses import replace
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hidra_core import DriverChoice, EventSource, FileEvent, create_driver
from hidra_pilatus.header import HeaderError, read_head, read_metadata

__all__ = ["PilatusConfig", "PilatusEventSource"]

log = logging.getLogger(__name__)

_SECTION = "sender.source.pilatus"
#: seconds of header reading after which a poll returns what it has (the rest comes with the next polls)
POLL_BUDGET_S = 0.1


class PilatusConfig(BaseModel):
    """Options of the ``pilatus`` source (``source: {type: pilatus, pilatus: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field("hidra-data/source", description=(
        "the camserver's image directory (must exist); handed to the watching source as its `path`"))
    watch: DriverChoice = Field(
        default_factory=lambda: DriverChoice(type="inotify"), description=(
            "the event source that finds closed images (hidra.event_sources): inotify on a local disk or ramdisk;"
            " on a network share, where inotify never fires, a polling one. Its options, without `path`"))
    temp_patterns: list[str] = Field([".*", "*.tmp", "*.part", "*~"], description=(
        "shell patterns of the names the camserver writes before renaming to the final name: never sent"))
    image_patterns: list[str] = Field(["*.cbf", "*.tif", "*.tiff"], description=(
        "shell patterns of the files whose header is read into the metadata; other files are sent without it"))
    name_pattern: str = Field(r"^(?P<series>.+)_(?P<frame>\d+)\.[^.]+$", description=(
        "regular expression on the file name with the groups `series` and `frame` (an integer): the metadata's"
        " `series` and `frame`; a name that does not match has neither"))
    max_header_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024, description=(
        "bytes read from the start of an image to find its header; a header that does not end within them is a"
        " metadata error (the image is still sent)"))
    max_header_text: int = Field(4096, ge=0, description=(
        "characters of the raw header text kept in the metadata (`header`); 0 leaves it out"))

    @field_validator("name_pattern")
    @classmethod
    def _groups(cls, value: str) -> str:
        try:
            groups = re.compile(value).groupindex
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if not {"series", "frame"} <= set(groups):
            raise ValueError(f"needs the named groups (?P<series>...) and (?P<frame>...), got {value!r}")
        return value

    @model_validator(mode="after")
    def _path_here(self) -> PilatusConfig:
        if "path" in self.watch.options:
            raise ValueError(f"give the directory as {_SECTION}.path, not as watch.{self.watch.type}.path")
        return self


class PilatusEventSource(EventSource):
    config_class = PilatusConfig
    default_fetcher = "file"
    config: PilatusConfig

    def __init__(self, config: PilatusConfig) -> None:
        super().__init__(config)
        watch = config.watch
        self._inner: EventSource = create_driver("event source", watch.type, {**watch.options, "path": config.path},
                                                 "pilatus source", f"{_SECTION}.watch.{watch.type}")
        self._name = re.compile(config.name_pattern, re.DOTALL)  # NOTE: a name may hold a newline
        self._pending: deque[FileEvent] = deque()  # reported by the watching source, header not read yet
        self._stats = {"images": 0, "metadata_errors": 0, "temp_names": 0, "other_files": 0}

    @property
    def root(self) -> str | None:
        return self._inner.root

    @property
    def stats(self) -> dict[str, int]:
        """Counters: images (header read), metadata_errors, temp_names (skipped), other_files (sent as they are)."""
        return dict(self._stats)

    def open(self, context: Any) -> None:
        self._inner.open(context)

    def close(self) -> None:
        self._inner.close()

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        if not self._pending:
            self._pending.extend(self._inner.poll(timeout_ms))
        out: list[FileEvent] = []
        # NOTE: headers cost ~0.3 ms each here, more on a slow share: a batch of 1000 (a start-up scan) is handed
        # over in parts, so that one poll stays short and the sender's source thread sees its stop flag
        deadline = time.monotonic() + POLL_BUDGET_S
        while self._pending and (not out or time.monotonic() < deadline):
            event = self._pending.popleft()
            if _matches(event.filename, self.config.temp_patterns):
                self._stats["temp_names"] += 1
                continue
            out.append(self._describe(event))
        return out

    def _describe(self, event: FileEvent) -> FileEvent:
        """The event with the image's metadata: series and frame from its name, then its header."""
        meta: dict[str, Any] = dict(event.metadata)
        match = self._name.match(event.filename)
        if match:
            meta["series"] = match["series"]
            try:
                meta["frame"] = int(match["frame"])
            except (TypeError, ValueError):
                pass
        if _matches(event.filename, self.config.image_patterns):
            meta.update(self._header(event))
        else:
            self._stats["other_files"] += 1
        return replace(event, metadata=meta, series=meta.get("series") or event.series)

    def _header(self, event: FileEvent) -> Mapping[str, Any]:
        path = _path_of(event)
        try:
            head = read_head(path, self.config.max_header_bytes)
            meta = read_metadata(head, self.config.max_header_bytes, self.config.max_header_text)
        except Exception as exc:  # NOTE: fabio raises anything on a corrupt file; the image goes out all the same
            why = str(exc) if isinstance(exc, HeaderError) else f"{type(exc).__name__}: {exc}"
            self._stats["metadata_errors"] += 1
            log.warning("pilatus: no metadata for %r (%s); it is sent without (%d such so far)", path, why,
                        self._stats["metadata_errors"])
            return {"metadata_error": why[:500]}
        self._stats["images"] += 1
        return meta


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _path_of(event: FileEvent) -> str:
    """The file to read: the link's target for a symlink the watching source followed (it says where)."""
    rel = str(event.extra.get("link_target") or event.file_id)
    return os.path.join(event.source_path, *rel.split("/"))
