"""The ``file`` fetcher: the fetcher contract on real files, plus what only local files can do."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

from hidra_core import FileEvent, FileStat, SourceChanged
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
    event = FileEvent(str(root), "run", "a")
    fetcher.remove(event, fetcher.stat(event))
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


def test_file_open_for_writing_is_busy_until_its_writer_closes_it(tmp_path: Path, fetcher: FileFetcher) -> None:
    event = FileEvent(str(tmp_path), "", "w.bin")
    with open(tmp_path / "w.bin", "wb") as writer:
        writer.write(b"half")
        writer.flush()
        stat = fetcher.stat(event)
        assert fetcher.busy(event, stat) is True
    assert fetcher.busy(event, fetcher.stat(event)) is False


def test_a_file_written_since_its_stat_is_busy(tmp_path: Path, fetcher: FileFetcher) -> None:
    (tmp_path / "grows.bin").write_bytes(b"a")
    event = FileEvent(str(tmp_path), "", "grows.bin")
    stat = fetcher.stat(event)
    with open(tmp_path / "grows.bin", "ab") as f:
        f.write(b"more")
    assert fetcher.busy(event, stat) is True


def test_remove_refuses_a_file_open_in_another_process(tmp_path: Path, fetcher: FileFetcher) -> None:
    path = tmp_path / "held.bin"
    path.write_bytes(b"data")
    event = FileEvent(str(tmp_path), "", "held.bin")
    stat = fetcher.stat(event)
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(path)!r}, 'ab'); print('open', flush=True); "
                               "input()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(SourceChanged, match="open in another process"):
            fetcher.remove(event, stat)
        assert path.read_bytes() == b"data"
    finally:
        holder.communicate("\n", timeout=30)
    fetcher.remove(event, stat)
    assert not path.exists()


def test_remove_refuses_a_replacement_with_the_same_size_and_mtime(tmp_path: Path, fetcher: FileFetcher) -> None:
    """``cp -p`` / ``rsync -t``: another file under the name, same size and mtime; it was never sent."""
    path = tmp_path / "same.bin"
    path.write_bytes(b"first")
    event = FileEvent(str(tmp_path), "", "same.bin")
    sent = fetcher.stat(event)
    (tmp_path / "new.tmp").write_bytes(b"other")
    os.utime(tmp_path / "new.tmp", ns=(sent.mtime_ns, sent.mtime_ns))
    os.rename(tmp_path / "new.tmp", path)
    now = fetcher.stat(event)
    assert (now.size, now.mtime_ns) == (sent.size, sent.mtime_ns) and now.identity != sent.identity
    with pytest.raises(SourceChanged):
        fetcher.remove(event, sent)
    assert path.read_bytes() == b"other"


@pytest.mark.parametrize("where", ["file", "directory"])
def test_symlinks_are_never_followed(tmp_path: Path, fetcher: FileFetcher, where: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    root = _source(tmp_path)
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"private")
    secret.chmod(0o600)
    if where == "file":
        (root / "link.txt").symlink_to(secret)
        event = FileEvent(str(root), "", "link.txt")
    else:
        (root / "sub").symlink_to(secret.parent)
        event = FileEvent(str(root), "sub", "secret.txt")
    with caplog.at_level(logging.WARNING):
        assert fetcher.stat(event) is None
    assert "symlink" in caplog.text
    with pytest.raises(OSError):
        list(fetcher.chunks(event, FileStat(7, 0, 0), 4))
    fetcher.remove(event, FileStat(7, 0, 0))
    assert secret.read_bytes() == b"private"


def test_a_followed_link_reads_its_target_and_removal_takes_only_the_link(tmp_path: Path,
                                                                          fetcher: FileFetcher) -> None:
    root = _source(tmp_path)
    (root / "data").mkdir()
    (root / "data" / "frame.cbf").write_bytes(b"frame")
    (root / "latest.cbf").symlink_to(root / "data" / "frame.cbf")
    event = FileEvent(str(root), "", "latest.cbf", {"link_target": "data/frame.cbf"})
    stat = fetcher.stat(event)
    assert stat is not None and [bytes(c) for c in fetcher.chunks(event, stat, 100)] == [b"frame"]
    fetcher.remove(event, stat)
    assert not (root / "latest.cbf").is_symlink()
    assert (root / "data" / "frame.cbf").read_bytes() == b"frame"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the fetcher as a user without CAP_LEASE")
def test_without_leases_a_file_counts_as_busy_until_it_settled() -> None:
    """A file of another user: no lease can be taken, so the settle time decides (and a log line says so)."""
    base = tempfile.mkdtemp(prefix="hidra-foreign-")  # NOTE: pytest's tmp_path is closed to other users
    try:
        os.chmod(base, 0o755)
        path = Path(base) / "foreign.bin"
        path.write_bytes(b"x")
        path.chmod(0o644)
        lines = _as_nobody(lambda: _settle_story(base, str(path)))
    finally:
        shutil.rmtree(base)
    assert lines[:2] == ["fresh busy True", "settled True"], lines
    assert any("file leases unavailable" in line for line in lines[2:]), lines


def _settle_story(base: str, path: str) -> list[str]:
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("hidra_files").addHandler(handler)
    fetcher = FileFetcher(FileFetcherConfig(settle_s=0.3))
    event = FileEvent(base, "", "foreign.bin")
    stat = fetcher.stat(event)
    out = [f"fresh busy {fetcher.busy(event, stat)}"]
    deadline = time.monotonic() + 30
    while fetcher.busy(event, fetcher.stat(event)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling interval of a deadline loop
    out.append(f"settled {not fetcher.busy(event, fetcher.stat(event))}")
    return out + messages


def _as_nobody(story: Callable[[], list[str]]) -> list[str]:
    """Run ``story`` in a forked child that dropped root (and so CAP_LEASE); its lines come back over a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, "\n".join(story()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    assert os.waitpid(pid, 0)[1] == 0, text
    return text.splitlines()
