"""The ``hdf5`` writer: one HDF5 file per detector series, each frame confirmed only once it is durable.

``series_start`` creates the series' file under a fixed temp name in ``<root>/.hidra-partial/hdf5/``, every
``frame`` becomes one chunk of ``/entry/data/data`` (a direct chunk write of the payload as received, at index
``image_id``), ``series_end`` records its facts and renames the file to ``<series>.h5`` (``<series>.aborted.h5``
when the source aborted it). ``commit_each`` flushes and fsyncs each file touched once per batch. A restarted
receiver finds the temp file by its name and continues the series (``seriesfile`` says why that is safe after a
SIGKILL); a frame whose chunk is already stored is confirmed without writing it again.

Threads: ``open``/``write``/``close`` run in the receiving thread, ``commit_each`` in the commit thread and
``cleanup`` in a start-up thread; every HDF5 call and the table of open series are guarded by one lock, only
fsync runs outside it. An fd kept per series (valid across close and rename) is what commit fsyncs; it is
released once the series is finished and no handle of it waits for its commit.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import h5py
from pydantic import BaseModel, ConfigDict, Field

from hidra_core import FRAME, SERIES_END, SERIES_START, SafeTree, Writer, WriteTarget, split_checked
from hidra_hdf5.framing import FrameSpec, SeriesRefused, frame_spec
from hidra_hdf5.seriesfile import DATA, SeriesFile, identity_of, recover, write_header

__all__ = ["Hdf5Writer", "Hdf5WriterConfig"]

log = logging.getLogger(__name__)

_SUBDIR = "hdf5"
_Key = tuple[tuple[str, ...], str]


def _link_aside(path: str, prefix: str, suffix: str = "") -> str:
    """A second name ``<path><prefix>N<suffix>`` (lowest free N) for the file at ``path``; never replaces one."""
    for n in itertools.count(1):
        aside = f"{path}{prefix}{n}{suffix}"
        try:
            os.link(path, aside, follow_symlinks=False)
            return aside
        except FileExistsError:
            continue
    raise AssertionError("unreachable")  # pragma: no cover


class Hdf5WriterConfig(BaseModel):
    """Options of the ``hdf5`` writer (``receiver: {hdf5: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fsync: bool = Field(True, description="fsync each series file touched by a commit batch before its frames are"
                        " confirmed, and the file and directory at series end")
    existing: Literal["backup", "overwrite"] = Field(
        "backup", description="a series file whose final name is taken: 'backup' keeps the earlier file as"
        " <name>.~N~ (lowest free N), 'overwrite' replaces it")
    abandon_after_s: float | None = Field(
        86400.0, gt=0, description="at start-up, an unfinished series file not written for this long (its series_end"
        " never came, e.g. the sender was reset) is published as <series>.aborted.h5 with reason 'abandoned';"
        " null keeps unfinished series for ever (they continue when their frames come again)")


@dataclass
class _Message:
    """One series message between ``open`` and ``commit``."""

    item: WriteTarget
    key: _Key
    buffers: list[memoryview] = field(default_factory=list)
    file: SeriesFile | None = None  # set by close: the file this message touched (None: nothing to make durable)


@dataclass
class _Live:
    """Bookkeeping of a series file: handles awaiting commit, and whether its fd may go."""

    file: SeriesFile
    pending: int = 0
    finished: bool = False


class Hdf5Writer(Writer):
    config_class = Hdf5WriterConfig
    accepts = frozenset({SERIES_START, FRAME, SERIES_END})
    # NOTE: one flush + fsync of the series file serves every frame of a commit: gather a few ms of frames
    commit_linger_s = 0.005

    def __init__(self, config: Hdf5WriterConfig, *, target: str) -> None:
        super().__init__(config, target=target)
        self.config: Hdf5WriterConfig = config
        self._tree = SafeTree(target)
        self._lock = threading.Lock()
        self._open: dict[_Key, SeriesFile] = {}
        self._live: dict[int, _Live] = {}

    # --- receiving thread -------------------------------------------------------------------------------------
    def open(self, item: WriteTarget) -> _Message:
        if item.kind not in self.accepts:
            raise SeriesRefused(f"{item.relative_name}: the hdf5 writer takes series messages, not {item.kind!r}")
        if not item.series:
            raise SeriesRefused(f"{item.relative_name}: a {item.kind} message without a series name")
        split_checked("/".join(item.relative_parts), f"{item.series}.aborted.h5")
        return _Message(item, (item.relative_parts, item.series))

    def write(self, handle: _Message, data: Any) -> None:
        # NOTE: read-only buffers (ZeroMQ frames) are kept as views, no copy; close() stores them before the
        # receiver lets go of the message. A writable one might be reused by its owner meanwhile: copied.
        view = memoryview(data)
        handle.buffers.append(view if view.readonly else memoryview(bytes(view)))

    def close(self, handle: _Message) -> None:
        # NOTE: an empty message (series_end) may come without any write()
        payload: Any = handle.buffers[0] if len(handle.buffers) == 1 else b"".join(handle.buffers)
        handle.buffers = []
        with self._lock:
            kind = handle.item.kind
            if kind == SERIES_START:
                handle.file = self._start(handle, bytes(payload))
            elif kind == FRAME:
                handle.file = self._frame(handle, payload)
            else:
                self._end(handle)
            if handle.file is not None:
                self._live.setdefault(id(handle.file), _Live(handle.file)).pending += 1

    def _start(self, handle: _Message, payload: bytes) -> SeriesFile:
        meta = handle.item.event_metadata
        try:
            current = self._lookup(handle.key)
        except SeriesRefused as exc:  # NOTE: an unreadable leftover was moved aside; a new start needs none of it
            log.error("%s; series %s starts afresh", exc, handle.key[1])
            current = None
        if current is not None and current.identity == identity_of(meta):
            log.info("%s: series_start again (re-sent after a restart): the series continues", current.series)
            return current
        if current is not None:
            log.warning("%s: a new series of this name started before the end of the earlier one, which is kept"
                        " as aborted", current.series)
            self._finish_now(handle.key, current, {"aborted": True, "reason": "a new series of the same name"
                                                   " started"}, ".aborted.h5")
        temp = self._temp_path(handle.key)
        write_header(temp, handle.key[1], "/".join((*handle.key[0], handle.key[1])), meta, payload)
        opened = self._open[handle.key] = SeriesFile(temp)
        return opened

    def _frame(self, handle: _Message, payload: Any) -> SeriesFile | None:
        meta = handle.item.event_metadata
        spec = frame_spec(meta)
        current = self._lookup_same(handle)
        if current is None:
            self._check_published(handle.key, meta, spec)
            return None
        if not current.write_frame(spec, payload):
            log.debug("%s: frame %d is already stored (re-sent): confirmed, not written again", current.series,
                      spec.image_id)
        return current

    def _end(self, handle: _Message) -> None:
        meta = handle.item.event_metadata
        current = self._lookup_same(handle)
        if current is None:
            if self._published(handle.key, meta) is None:
                raise SeriesRefused(f"series_end of {handle.key[1]!r}: no such series was started here")
            return  # NOTE: re-sent after a restart that came between the rename and the confirmation
        # NOTE: published here, in the receiving thread, so that the temp name is free before the next message
        # (a new series may have the same name); once per series, so the fsync does not slow frames down.
        aborted = bool(meta.get("aborted"))
        self._finish_now(handle.key, current, meta, ".aborted.h5" if aborted else ".h5")

    def _lookup_same(self, handle: _Message) -> SeriesFile | None:
        """``_lookup``, refusing a message of another series that has the same name (a stale one)."""
        current = self._lookup(handle.key)
        meta = handle.item.event_metadata
        if current is not None and current.identity != identity_of(meta):
            raise SeriesRefused(f"{handle.item.kind} {handle.item.filename!r} belongs to series {identity_of(meta)}"
                                f" (series_id:series_unique_id), but {handle.key[1]!r} is now {current.identity}")
        return current

    def _lookup(self, key: _Key) -> SeriesFile | None:
        """The open file of a series, or its temp file continued (after a restart), or None."""
        current = self._open.get(key)
        if current is not None:
            return current
        temp = self._temp_path(key)
        if not os.path.exists(temp):
            return None
        current = self._open[key] = self._resume(temp)
        log.info("%s: unfinished series file found in %s; the series continues", key[1], os.path.dirname(temp))
        return current

    @staticmethod
    def _resume(temp: str) -> SeriesFile:
        try:
            return SeriesFile(temp)
        except (OSError, KeyError) as exc:
            log.warning("%s was left open for writing (%s): rebuilding it from its chunks", temp, exc)
        try:
            count = recover(temp)
        except (OSError, KeyError, ValueError) as exc:
            aside = _link_aside(temp, ".unreadable-")
            os.unlink(temp)
            raise SeriesRefused(f"{temp} cannot be read ({exc}); moved to {aside}, its series cannot continue") from exc
        log.info("%s rebuilt with %d stored frame chunks", temp, count)
        return SeriesFile(temp)

    def _published(self, key: _Key, meta: Any) -> str | None:
        """The final file of this very series (same detector identity), if it was already published."""
        base = self._final_base(key)
        for name in (base + ".h5", base + ".aborted.h5"):
            try:
                with h5py.File(name, "r") as f:
                    if f["entry"].attrs.get("identity") == identity_of(meta):
                        return name
            except (OSError, KeyError):
                continue
        return None

    def _check_published(self, key: _Key, meta: Any, spec: FrameSpec) -> None:
        """A frame of no open series: fine if its series is published with it (re-sent), else refused."""
        final = self._published(key, meta)
        if final is None:
            raise SeriesRefused(f"frame {spec.image_id} of series {key[1]!r}: no series_start was seen and no"
                                " unfinished file of the series exists; not stored")
        with h5py.File(final, "r") as f:
            data = f.get(DATA)
            offset = (spec.image_id, 0, 0) if data is not None and data.ndim == 3 else (
                spec.image_id, spec.channel_index, 0, 0)
            if data is not None and spec.image_id < data.shape[0] and \
                    data.id.get_chunk_info_by_coord(offset).byte_offset is not None:
                return
        # NOTE: a published file may already be read (or copied away): it is never changed afterwards
        raise SeriesRefused(f"frame {spec.image_id} of series {key[1]!r} came after the series was published as"
                            f" {final}; a published file is not changed, the frame is not stored")

    def _finish_now(self, key: _Key, current: SeriesFile, facts: Mapping[str, Any], suffix: str) -> None:
        """Record the end facts, close, fsync and publish a series; its fd goes once its frames are committed."""
        current.set_end(facts)
        current.close()
        del self._open[key]
        try:
            self._sync(current)
            self._place(current.path, self._final_base(key) + suffix)
        finally:
            self._retire(current)

    # --- commit thread ----------------------------------------------------------------------------------------
    def commit(self, handles: Sequence[_Message]) -> None:
        for error in self.commit_each(handles):
            if error is not None:
                raise error

    def commit_each(self, handles: Sequence[_Message]) -> list[BaseException | None]:
        errors: list[BaseException | None] = [None] * len(handles)
        files: dict[int, tuple[SeriesFile, list[int]]] = {}
        for n, h in enumerate(handles):
            if h.file is not None:
                files.setdefault(id(h.file), (h.file, []))[1].append(n)
        for sf, members in files.values():
            try:
                with self._lock:
                    sf.flush()
                    fd = sf.sync_fd  # NOTE: read under the lock: the first frame swaps the file (and its fd)
                if self.config.fsync:
                    os.fsync(fd)
            except OSError as exc:
                for n in members:
                    errors[n] = exc
        with self._lock:
            for h in handles:
                self._done(h)
        return errors

    def _sync(self, sf: SeriesFile) -> None:
        if self.config.fsync:
            os.fsync(sf.sync_fd)

    def _place(self, temp: str, final: str) -> None:
        """Move a finished series file to its final name (``existing`` says what happens to one there)."""
        if os.path.isdir(final):
            raise IsADirectoryError(f"{final!r}: a directory stands where the series file should go")
        if os.path.lexists(final) and self.config.existing == "backup":
            backup = _link_aside(final, ".~", "~")
            log.info("%s existed: the earlier file is kept as %s", final, os.path.basename(backup))
        os.replace(temp, final)
        if self.config.fsync:
            for directory in {os.path.dirname(final), os.path.dirname(temp)}:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def _done(self, handle: _Message) -> None:
        """The handle's commit (or abort) is over: release its file's fd when nothing else needs it."""
        sf, handle.file = handle.file, None
        if sf is None:
            return
        live = self._live.get(id(sf))
        if live is None:
            return
        live.pending -= 1
        if live.finished and live.pending <= 0:
            del self._live[id(sf)]
            sf.release()

    def _retire(self, sf: SeriesFile) -> None:
        live = self._live.setdefault(id(sf), _Live(sf))
        live.finished = True
        if live.pending <= 0:
            del self._live[id(sf)]
            sf.release()

    # --- either thread ----------------------------------------------------------------------------------------
    def abort(self, handle: _Message) -> None:
        # NOTE: a frame is stored only in close(); one aborted before leaves nothing. After close its chunk stays
        # (unconfirmed): the sender sends it again and it is then confirmed without a second write.
        handle.buffers = []
        with self._lock:
            self._done(handle)

    def shutdown(self) -> None:
        with self._lock:
            for sf in (*self._open.values(), *(live.file for live in self._live.values())):
                sf.release()
            self._open.clear()
            self._live.clear()

    def cleanup(self, before: float) -> int:
        directory = os.path.join(self._tree.partial_directory(), _SUBDIR)
        if not os.path.isdir(directory):
            return 0
        done = 0
        for entry in os.scandir(directory):
            try:
                age = entry.stat(follow_symlinks=False).st_mtime
                if entry.name.endswith(".new") and age < before:
                    os.unlink(entry.path)
                    done += 1
                elif entry.name.endswith(".h5") and self.config.abandon_after_s is not None \
                        and age < before - self.config.abandon_after_s:
                    done += self._abandon(entry.path)
            except (OSError, SeriesRefused) as exc:
                log.error("%s: could not clean up: %s", entry.path, exc)
        return done

    def _abandon(self, temp: str) -> int:
        with self._lock:
            if any(sf.path == temp for sf in self._open.values()) or not os.path.exists(temp):
                return 0
            sf = self._resume(temp)
            *parts, series = sf.final.split("/")
            key = (tuple(parts), series)
            self._open[key] = sf
            self._finish_now(key, sf, {"aborted": True, "reason": "abandoned: no series_end came"}, ".aborted.h5")
        log.warning("%s: series %s had no end for a long time: published as %s.aborted.h5", temp, series,
                    sf.final)
        return 1

    # --- names ------------------------------------------------------------------------------------------------
    def _temp_path(self, key: _Key) -> str:
        directory = os.path.join(self._tree.partial_directory(), _SUBDIR)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        digest = hashlib.sha256("/".join((*key[0], key[1])).encode()).hexdigest()[:16]
        return os.path.join(directory, f"{key[1][:100]}-{digest}.h5")

    def _final_base(self, key: _Key) -> str:
        """``<root>/<relative path>/<series>`` (the final name without its suffix), directories created."""
        return os.path.join(self._tree.directory(key[0]), key[1])
