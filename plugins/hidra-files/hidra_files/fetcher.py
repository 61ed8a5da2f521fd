"""The ``file`` fetcher: reads local files in chunks and removes them when the kernel says so."""
from __future__ import annotations

import logging
import os
import stat as _stat
from typing import Iterator

from pydantic import BaseModel, ConfigDict

from hidra_core.interfaces import Fetcher, FileStat
from hidra_core.types import FileEvent

__all__ = ["FileFetcher", "FileFetcherConfig"]

log = logging.getLogger(__name__)


class FileFetcherConfig(BaseModel):
    """The ``file`` fetcher takes no options yet; any key is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def path_of(event: FileEvent) -> str:
    parts = event.relative_path.split("/") if event.relative_path else []
    return os.path.join(event.source_path, *parts, event.filename)


class FileFetcher(Fetcher):
    config_class = FileFetcherConfig

    def stat(self, event: FileEvent) -> FileStat | None:
        try:
            st = os.stat(path_of(event))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:  # a symlink loop, no permission: nothing to send, and no reason to crash
            log.warning("cannot stat %s: %s", path_of(event), exc)
            return None
        if not _stat.S_ISREG(st.st_mode):
            return None
        return FileStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def chunks(self, event: FileEvent, stat: FileStat, chunksize: int) -> Iterator[bytes | bytearray]:
        # NOTE: each chunk is read into its own fresh buffer (one kernel copy, no Python copy) rather than
        # mmap'ed: a file truncated by its writer while mapped would kill the whole sender with SIGBUS.
        fd = os.open(path_of(event), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size != stat.size:
                raise OSError(f"{path_of(event)} changed size from {stat.size} to {size} while being sent")
            if size == 0:
                yield b""
                return
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            for offset in range(0, size, chunksize):
                length = min(chunksize, size - offset)
                buf = bytearray(length)
                got = os.preadv(fd, [buf], offset)
                if got != length:
                    raise OSError(f"{path_of(event)} shrank while being sent (short read at {offset})")
                yield buf
        finally:
            os.close(fd)

    def remove(self, event: FileEvent) -> None:
        try:
            os.unlink(path_of(event))
        except FileNotFoundError:
            pass
