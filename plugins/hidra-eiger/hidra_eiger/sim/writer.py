"""The FileWriter: a series' ``<pattern>_master.h5`` and ``<pattern>_data_NNNNNN.h5`` written as images arrive.

A data file is created (listed) with its first image and grows image by image until its last; the master is
listed at arm and final when the series ends. Content is real HDF5 or, for transport tests, random bytes.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hidra_eiger.sim.filewriter import FileStore, Stalled, StoredFile, random_bytes
from hidra_eiger.sim.h5files import FrameChunks, data_file, master_file
from hidra_eiger.sim.params import Param, ParamTree
from hidra_eiger.sim.series import Series

log = logging.getLogger(__name__)

__all__ = ["SeriesWriter", "filewriter_trees"]


def filewriter_trees(v18: bool) -> dict[tuple[str, str], ParamTree]:
    config = {
        "mode": Param("disabled", "string", allowed_values=["enabled", "disabled"]),
        "name_pattern": Param("series_$id", "string"),
        "nimages_per_file": Param(1000, "uint", min=0, max=2**31 - 1),
        "image_nr_start": Param(1, "uint", min=0, max=2**31 - 1),
        "compression_enabled": Param(True, "bool"),
    }
    if v18:  # NOTE: the format key exists on newer firmware only; only the legacy layout is written
        config["format"] = Param("hdf5 nexus legacy nxmx", "string", allowed_values=["hdf5 nexus legacy nxmx"])
    status = {"state": Param("disabled", "string", "r"), "error": Param([], "list", "r")}
    return {("filewriter", "config"): ParamTree("filewriter config", config),
            ("filewriter", "status"): ParamTree("filewriter status", status)}


@dataclass
class _Plan:
    base: str  # name_pattern with $id replaced
    per_file: int
    image_nr_start: int
    total: int
    detector: dict[str, Any]
    chunks: FrameChunks | None  # None: random content
    random_size: int
    master: StoredFile
    written: int = 0
    data: StoredFile | None = None
    data_first: int = 0
    data_count: int = 0

    def data_name(self, number: int) -> str:
        return f"{self.base}_data_{number:06d}.h5"

    def master_content(self, written: int) -> bytes:
        if self.chunks is None:
            return random_bytes(self.random_size)
        if self.per_file == 0:
            return master_file(self.detector, [], self.chunks, range(written), self.image_nr_start)
        files = -(-written // self.per_file)
        links = [self.data_name(n).rsplit("/", 1)[-1] for n in range(1, files + 1)]
        return master_file(self.detector, links)

    def data_content(self, first: int, count: int) -> bytes:
        if self.chunks is None:
            return random_bytes(self.random_size)
        return data_file(self.chunks, range(first, first + count), self.image_nr_start)


def _share(size: int, done: int, of: int) -> int:
    """Bytes of a file of ``size`` written after ``done`` of its ``of`` images."""
    return size * done // of if of else size


class SeriesWriter:
    """Writes into ``store`` while ``filewriter/config/mode`` is enabled; ``knobs()`` = simulator config values."""

    def __init__(self, store: FileStore, config: ParamTree, knobs: Callable[[], dict[str, Any]]) -> None:
        self.store = store
        self.config = config
        self._knobs = knobs
        self._lock = threading.Lock()
        self._plan: _Plan | None = None

    def arm(self, series: Series) -> None:
        cfg = self.config.values()
        if cfg["mode"] != "enabled":
            return
        knobs = self._knobs()
        compression = series.compression if cfg["compression_enabled"] else "none"
        chunks = FrameChunks(series.generator, compression) if knobs["file_content"] == "hdf5" else None
        base = str(cfg["name_pattern"]).replace("$id", str(series.series_id))
        per_file, total = int(cfg["nimages_per_file"]), series.nimages_total
        with self._lock:
            plan = _Plan(base, per_file, int(cfg["image_nr_start"]), total, dict(series.detector), chunks,
                         int(knobs["random_file_bytes"]), None)  # type: ignore[arg-type]
            content = plan.master_content(total)
            # NOTE: the master is there from arm on but not final: half of it, or its header share when it holds
            # the frames itself, until the series ends
            first = _share(len(content), 1, total + 1) if per_file == 0 else len(content) // 2
            plan.master = self.store.add(f"{base}_master.h5", content, limit=first)
            self._plan = plan
        log.info("filewriter: series %d writes %s_master.h5, %d images, %d per file", series.series_id, base,
                 total, per_file)

    def write(self, first: int, count: int, frame_time: float, stop: threading.Event) -> int:
        """Write images ``first .. first+count-1`` at the detector's pace; the number written (fewer: stopped)."""
        if self._plan is None:  # NOTE: filewriter disabled: nothing to write, nothing stopped
            return count
        t0 = time.monotonic()
        for n, index in enumerate(range(first, first + count)):
            delay = t0 + n * frame_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # NOTE: pacing at frame_time, not synchronisation: the detector's own clock
            try:
                if stop.is_set() or not self._image(index, stop):
                    return n
            except Stalled:
                return n
        return count

    def _image(self, index: int, stop: threading.Event) -> bool:
        with self._lock:
            plan = self._plan
            if plan is None or index >= plan.total:
                return False
            if plan.per_file == 0:
                self._advance(plan.master, _share(len(plan.master.content), index + 2, plan.total + 1), stop)
            else:
                self._data_image(plan, index, stop)
            plan.written = index + 1
            return True

    def _data_image(self, plan: _Plan, index: int, stop: threading.Event) -> None:
        if plan.data is None or index >= plan.data_first + plan.data_count:
            count = min(plan.per_file, plan.total - index)
            content = plan.data_content(index, count)
            limit = _share(len(content), 1, count)
            self.store.reserve(limit, stop)
            plan.data = self.store.add(plan.data_name(index // plan.per_file + 1), content, limit=limit)
            plan.data_first, plan.data_count = index, count
            if count == 1:
                self.store.grow(plan.data, limit, written=True)
            return
        done = index - plan.data_first + 1
        self._advance(plan.data, _share(len(plan.data.content), done, plan.data_count), stop,
                      written=done == plan.data_count)

    def _advance(self, stored: StoredFile, limit: int, stop: threading.Event, *, written: bool = False) -> None:
        self.store.reserve(max(0, limit - stored.limit), stop)
        self.store.grow(stored, limit, written=written)

    def end(self) -> None:
        """The series ended (all triggers done, disarm, cancel, abort): files become final with what was written."""
        with self._lock:
            plan, self._plan = self._plan, None
        if plan is None:
            return
        if plan.data is not None and plan.written < plan.data_first + plan.data_count:
            count = plan.written - plan.data_first
            content = plan.data_content(plan.data_first, count) if plan.chunks else plan.data.content[:plan.data.limit]
            self.store.grow(plan.data, len(content), written=True, content=content)
        master = plan.master_content(plan.written) if plan.chunks and plan.written < plan.total else None
        self.store.grow(plan.master, len(master or plan.master.content), written=True, content=master)
        log.info("filewriter: %s ended after %d of %d images", plan.base, plan.written, plan.total)
