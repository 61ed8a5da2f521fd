"""A ``trap`` fetcher for end-to-end tests: the ``file`` fetcher, except for files whose names ask for trouble.

``block*`` files are read only after a writer has opened and closed the FIFO named by ``fifo`` (a read that
blocks on a slow disk or share); ``boom-stat*``, ``boom-read*`` and ``boom-remove*`` raise ``RuntimeError`` in that
call; ``flaky*`` files fail their first read with ``EIO``.
"""
from __future__ import annotations

import errno
from typing import Any, Iterator

from pydantic import Field

from hidra_core import FileEvent, FileStat
from hidra_files.fetcher import FileFetcher, FileFetcherConfig


class TrapConfig(FileFetcherConfig):
    fifo: str = Field("", description="FIFO that reads of block* files wait on")


class TrapFetcher(FileFetcher):
    config_class = TrapConfig

    def __init__(self, config: TrapConfig) -> None:
        super().__init__(config)
        self._flaky: set[str] = set()

    def stat(self, event: FileEvent) -> FileStat | None:
        if event.filename.startswith("boom-stat"):
            raise RuntimeError("boom in stat")
        return super().stat(event)

    def chunks(self, event: FileEvent, stat: FileStat, chunksize: int) -> Iterator[Any]:
        if event.filename.startswith("boom-read"):
            raise RuntimeError("boom in read")
        if event.filename.startswith("flaky") and event.file_id not in self._flaky:
            self._flaky.add(event.file_id)
            raise OSError(errno.EIO, "flaky disk", event.filename)
        if event.filename.startswith("block"):
            with open(self.config.fifo, "rb") as fifo:
                fifo.read()
        yield from super().chunks(event, stat, chunksize)

    def remove(self, event: FileEvent, stat: FileStat) -> None:
        if event.filename.startswith("boom-remove"):
            raise RuntimeError("boom in remove")
        super().remove(event, stat)
