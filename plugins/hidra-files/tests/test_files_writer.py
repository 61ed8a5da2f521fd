"""The ``files`` writer: the writer contract, group and single commits, fsync, mtimes, long names, symlinks."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from hidra_core import PathRefused, WriteTarget
from hidra_core.testing import WriterContract

import hidra_files.writer as writer_module
from hidra_files.writer import FilesWriter, FilesWriterConfig

item = WriterContract.item
write_all = WriterContract.write_all


class TestFilesWriterContract(WriterContract):
    driver_name = "files"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    return path


@pytest.fixture
def make_writer(root: Path) -> Callable[..., FilesWriter]:
    return lambda **options: FilesWriter(FilesWriterConfig(**options), target=str(root))


class SyncLog(list):
    """Every fsync()/syncfs() the writer made, with which of ``finals`` existed at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.finals: list[Path] = []


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> SyncLog:
    log = SyncLog()

    def record(kind: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def spy(fd: int) -> None:
            log.append((kind, [p.exists() for p in log.finals]))
            real(fd)
        return spy

    monkeypatch.setattr(writer_module.os, "fsync", record("fsync", os.fsync))
    monkeypatch.setattr(writer_module, "_syncfs", record("syncfs", writer_module._syncfs))
    return log


def _batch(writer: FilesWriter, root: Path, names: list[str], syncs: SyncLog) -> list[Any]:
    handles = [write_all(writer, item(root, name, name.encode()), name.encode()) for name in names]
    syncs.finals[:] = [root / name for name in names]
    return handles


def _kinds(syncs: list[tuple[str, list[bool]]]) -> list[str]:
    return [kind for kind, _ in syncs]


@pytest.mark.parametrize("count", [1, 3])
def test_small_batch_fsyncs_each_file_then_its_directory(make_writer: Any, root: Path, syncs: SyncLog,
                                                         count: int) -> None:
    writer = make_writer(group_sync_min=4)
    names = [f"run/f{n}" for n in range(count)]
    writer.commit(_batch(writer, root, names, syncs))
    assert _kinds(syncs) == ["fsync"] * count + ["fsync"]  # every file, then the one directory
    assert all(not any(existed) for _, existed in syncs[:count]), "a file was visible before its data was synced"
    assert all((root / n).read_bytes() == n.encode() for n in names)


def test_large_batch_in_one_directory_uses_one_syncfs(make_writer: Any, root: Path, syncs: SyncLog) -> None:
    writer = make_writer(group_sync_min=4)
    names = [f"run/f{n}" for n in range(6)]
    writer.commit(_batch(writer, root, names, syncs))
    assert _kinds(syncs) == ["syncfs", "fsync"]  # data of all files at once, then the directory
    assert not any(syncs[0][1]), "files were renamed into place before their data was synced"
    assert all((root / n).read_bytes() == n.encode() for n in names)


def test_large_batch_over_many_directories_syncs_twice(make_writer: Any, root: Path, syncs: SyncLog) -> None:
    writer = make_writer(group_sync_min=4)
    names = [f"d{n}/f" for n in range(5)]
    writer.commit(_batch(writer, root, names, syncs))
    assert syncs == [("syncfs", [False] * 5), ("syncfs", [True] * 5)]


def test_group_sync_min_decides_the_path(make_writer: Any, root: Path, syncs: SyncLog) -> None:
    writer = make_writer(group_sync_min=2)
    writer.commit(_batch(writer, root, ["a/x", "a/y"], syncs))
    assert _kinds(syncs) == ["syncfs", "fsync"]


def test_fsync_off_syncs_nothing_but_still_commits(make_writer: Any, root: Path, syncs: SyncLog) -> None:
    writer = make_writer(fsync=False)
    for names in (["one/f"], [f"many/f{n}" for n in range(6)]):
        writer.commit(_batch(writer, root, names, syncs))
        assert all((root / n).read_bytes() == n.encode() for n in names)
    assert syncs == []
    assert not [p for p in root.rglob("*.part")]


@pytest.mark.parametrize("preserve", [True, False])
def test_preserve_mtime(make_writer: Any, root: Path, preserve: bool) -> None:
    writer = make_writer(preserve_mtime=preserve)
    handle = write_all(writer, item(root, "m.dat", b"m", mtime=1_500_000_000.5), b"m")
    writer.commit([handle])
    mtime = (root / "m.dat").stat().st_mtime
    if preserve:
        assert mtime == 1_500_000_000.5
    else:
        assert abs(mtime - time.time()) < 3600


def test_255_character_name_gets_a_valid_temp_name(make_writer: Any, root: Path) -> None:
    writer = make_writer()
    name = "n" * 251 + ".cbf"
    handle = write_all(writer, item(root, f"run/{name}", b"data"), b"data")
    [temp] = list((root / "run").iterdir())
    assert temp.name != name and len(os.fsencode(temp.name)) <= 255
    writer.commit([handle])
    assert [p.name for p in (root / "run").iterdir()] == [name]
    assert (root / "run" / name).read_bytes() == b"data"


def test_255_byte_utf8_name_gets_a_valid_temp_name(make_writer: Any, root: Path) -> None:
    writer = make_writer()
    name = "é" * 126 + "abc"  # 255 bytes, 129 characters
    assert len(os.fsencode(name)) == 255
    handle = write_all(writer, item(root, name, b"data"), b"data")
    writer.commit([handle])
    assert (root / name).read_bytes() == b"data"


def test_symlink_leading_outside_the_target_is_refused(make_writer: Any, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    writer = make_writer()
    for parts in (("escape",), ("escape", "deeper")):
        with pytest.raises(PathRefused):
            writer.open(WriteTarget(str(root), parts, "f.dat", {}))
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in root.iterdir()) == ["escape"]


def test_symlink_inside_the_target_is_followed(make_writer: Any, root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    writer = make_writer()
    writer.commit([write_all(writer, item(root, "alias/f.dat", b"in"), b"in")])
    assert (root / "real" / "f.dat").read_bytes() == b"in"


def test_final_name_that_is_a_symlink_is_replaced_not_followed(make_writer: Any, root: Path,
                                                               tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (root / "f.dat").symlink_to(victim)
    writer = make_writer()
    writer.commit([write_all(writer, item(root, "f.dat", b"new"), b"new")])
    assert victim.read_bytes() == b"precious"
    assert not (root / "f.dat").is_symlink() and (root / "f.dat").read_bytes() == b"new"


def test_cleanup_removes_stale_temp_files_only(make_writer: Any, root: Path) -> None:
    crashed = make_writer()
    stale = crashed.open(item(root, "run/stale.dat"))
    os.close(stale.fd)  # the predecessor died here
    old = time.time() - 3600
    os.utime(stale.temp, (old, old))
    (root / "run" / "kept.dat").write_bytes(b"a stored file")
    (root / "run" / "notes.part").write_bytes(b"not a temp name of this writer")
    os.utime(root / "run" / "notes.part", (old, old))
    assert make_writer().cleanup(time.time()) == 1
    assert sorted(p.name for p in (root / "run").iterdir()) == ["kept.dat", "notes.part"]


def test_cleanup_can_be_turned_off(make_writer: Any, root: Path) -> None:
    crashed = make_writer()
    stale = crashed.open(item(root, "stale.dat"))
    os.close(stale.fd)
    os.utime(stale.temp, (1, 1))
    assert make_writer(clean_stale_parts=False).cleanup(time.time()) == 0
    assert os.path.exists(stale.temp)
