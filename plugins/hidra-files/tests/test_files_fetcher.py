"""The ``file`` fetcher: the fetcher contract on real files, plus what only local files can do."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hidra_core import FileEvent
from hidra_core.testing import FetcherContract

from hidra_files.fetcher import FileFetcher, FileFetcherConfig


def _source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    root.mkdir(exist_ok=True)
    return root


class TestFileFetcherContract(FetcherContract):
    driver_name = "file"

    def make_event(self, tmp_path: Path, name: str, data: bytes) -> FileEvent:
        root = _source(tmp_path)
        (root / "run1").mkdir(exist_ok=True)
        (root / "run1" / name).write_bytes(data)
        return FileEvent(str(root), "run1", name)


@pytest.fixture
def fetcher() -> FileFetcher:
    return FileFetcher(FileFetcherConfig())


def test_nested_relative_path_is_joined_below_the_source(tmp_path: Path, fetcher: FileFetcher) -> None:
    root = _source(tmp_path)
    (root / "a" / "b c").mkdir(parents=True)
    (root / "a" / "b c" / "f.bin").write_bytes(b"nested")
    event = FileEvent(str(root), "a/b c", "f.bin")
    stat = fetcher.stat(event)
    assert stat is not None and stat.size == 6
    assert [bytes(c) for c in fetcher.chunks(event, stat, 4)] == [b"nest", b"ed"]


def test_stat_of_a_directory_or_fifo_is_none(tmp_path: Path, fetcher: FileFetcher) -> None:
    root = _source(tmp_path)
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")  # opening it for reading would block the sender forever
    assert fetcher.stat(FileEvent(str(root), "", "dir")) is None
    assert fetcher.stat(FileEvent(str(root), "", "fifo")) is None


def test_stat_below_a_file_is_none(tmp_path: Path, fetcher: FileFetcher) -> None:
    root = _source(tmp_path)
    (root / "plain").write_bytes(b"x")
    assert fetcher.stat(FileEvent(str(root), "plain", "child")) is None  # ENOTDIR, not an exception


def test_stat_times_are_the_files_times(tmp_path: Path, fetcher: FileFetcher) -> None:
    root = _source(tmp_path)
    path = root / "old.bin"
    path.write_bytes(b"x")
    os.utime(path, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    stat = fetcher.stat(FileEvent(str(root), "", "old.bin"))
    assert stat is not None and stat.mtime_ns == 1_500_000_000_123_456_789


def test_remove_deletes_only_the_file(tmp_path: Path, fetcher: FileFetcher) -> None:
    root = _source(tmp_path)
    (root / "run").mkdir()
    (root / "run" / "a").write_bytes(b"a")
    (root / "run" / "b").write_bytes(b"b")
    fetcher.remove(FileEvent(str(root), "run", "a"))
    assert sorted(p.name for p in (root / "run").iterdir()) == ["b"]


def test_large_file_in_many_chunks_is_read_exactly(tmp_path: Path, fetcher: FileFetcher) -> None:
    root = _source(tmp_path)
    data = os.urandom(3 * 2**20 + 17)
    (root / "big.bin").write_bytes(data)
    event = FileEvent(str(root), "", "big.bin")
    stat = fetcher.stat(event)
    assert stat is not None
    chunks = list(fetcher.chunks(event, stat, 2**20))
    assert [len(c) for c in chunks] == [2**20, 2**20, 2**20, 17]
    assert b"".join(chunks) == data


def test_pooled_buffers_are_never_reused_while_a_chunk_is_still_held(tmp_path: Path, fetcher: FileFetcher) -> None:
    """Chunks go to ZeroMQ without a copy: a buffer someone still holds must not be read into again."""
    chunk = 1 << 20
    data = os.urandom(6 * chunk)
    (tmp_path / "big.bin").write_bytes(data)
    event = FileEvent(str(tmp_path), "", "big.bin")
    stat = fetcher.stat(event)
    held = list(fetcher.chunks(event, stat, chunk))  # like ZeroMQ queues that have not sent anything yet
    assert [bytes(c) for c in held] == [data[i:i + chunk] for i in range(0, len(data), chunk)]
    first_round = {id(c.obj) for c in held}
    assert len(first_round) == 6
    del held
    again = [bytes(c) for c in fetcher.chunks(event, stat, chunk)]  # released: the pool is reused
    assert again == [data[i:i + chunk] for i in range(0, len(data), chunk)]
    reused = {id(c.obj) for c in fetcher.chunks(event, stat, chunk) if len(c) == chunk}
    assert reused & first_round
