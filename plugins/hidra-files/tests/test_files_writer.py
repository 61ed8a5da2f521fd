"""The ``files`` writer: the writer contract, group and single commits, fsync, mtimes, long names, symlinks."""
from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from hidra_core import PathRefused, SafeTree, WriteTarget
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


def test_255_character_name_while_unfinished_has_no_name_at_all(make_writer: Any, root: Path) -> None:
    writer = make_writer()
    name = "n" * 251 + ".cbf"
    handle = write_all(writer, item(root, f"run/{name}", b"data"), b"data")
    assert list((root / "run").iterdir()) == []
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


def test_files_of_one_directory_do_not_resolve_its_path_each(make_writer: Any, root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    writer = make_writer()
    resolved: list[tuple[str, ...]] = []
    real = SafeTree.directory

    def spy(tree: SafeTree, parts: tuple[str, ...]) -> str:
        resolved.append(parts)
        return real(tree, parts)

    monkeypatch.setattr(SafeTree, "directory", spy)
    for _ in range(2):
        writer.commit([write_all(writer, item(root, f"run/f{n}.dat", b"x"), b"x") for n in range(20)])
    assert resolved == [("run",)] * 3  # opened once, then checked once per batch
    assert len(list((root / "run").iterdir())) == 20


def test_directory_moved_out_of_the_target_after_use_gets_no_more_files(make_writer: Any, root: Path,
                                                                          tmp_path: Path) -> None:
    writer = make_writer()
    writer.commit([write_all(writer, item(root, "a/f.dat", b"1"), b"1")])
    (root / "a").rename(tmp_path / "moved")
    (root / "a").symlink_to(tmp_path / "moved")
    with pytest.raises(PathRefused):
        writer.commit([write_all(writer, item(root, "a/g.dat", b"2"), b"2")])
    assert [p.name for p in (tmp_path / "moved").iterdir()] == ["f.dat"]


def test_directory_renamed_or_removed_after_use_is_not_written_to_again(make_writer: Any, root: Path) -> None:
    writer = make_writer()
    writer.commit([write_all(writer, item(root, f"a/f{n}.dat", b"1"), b"1") for n in range(5)])
    (root / "a").rename(root / "renamed")
    early = write_all(writer, item(root, "a/early.dat", b"2"), b"2")  # opened before a new a/ appeared
    (root / "a").mkdir()
    writer.commit([early, *(write_all(writer, item(root, f"a/g{n}.dat", b"3"), b"3") for n in range(4))])
    assert sorted(p.name for p in (root / "a").iterdir()) == ["early.dat", "g0.dat", "g1.dat", "g2.dat", "g3.dat"]
    assert len(list((root / "renamed").iterdir())) == 5
    for p in (root / "a").iterdir():
        p.unlink()
    (root / "a").rmdir()
    writer.commit([write_all(writer, item(root, "a/h.dat", b"4"), b"4")])
    assert (root / "a" / "h.dat").read_bytes() == b"4"


@pytest.fixture
def no_tmpfile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without O_TMPFILE (as some network and FUSE file systems are)."""
    def refuse(directory: str) -> int:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), directory)

    monkeypatch.setattr(writer_module, "_open_unnamed", refuse)


def test_user_file_named_like_an_old_temp_file_survives_cleanup(make_writer: Any, root: Path) -> None:
    writer = make_writer()
    name = "run/scan.0123456789ab.part"  # the temp-file pattern of earlier versions
    writer.commit([write_all(writer, item(root, name, b"user data"), b"user data")])
    assert make_writer().cleanup(time.time() + 3600) == 0
    assert (root / name).read_bytes() == b"user data"


@pytest.mark.usefixtures("no_tmpfile")
def test_without_o_tmpfile_unfinished_files_live_only_in_the_reserved_directory(make_writer: Any,
                                                                                  root: Path) -> None:
    writer = make_writer()
    handle = write_all(writer, item(root, "run/scan.0123456789ab.part", b"data"), b"data")
    area = Path(writer.partial_path)
    assert area.parent == root / ".hidra-partial"
    assert [p for p in root.rglob("*") if p.is_file()] == [area / handle.temp]
    writer.commit([handle])
    assert (root / "run" / "scan.0123456789ab.part").read_bytes() == b"data"
    assert list(area.iterdir()) == []
    writer.shutdown()
    assert list((root / ".hidra-partial").iterdir()) == []  # its own directory goes with it


_OTHER_RECEIVER = """
import errno, json, os, sys
import hidra_files.writer as w
from hidra_core import WriteTarget

def refuse(directory):
    raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE here", directory)

w._open_unnamed = refuse  # NOTE: unfinished files then have names in the writer's partial directory
writer = w.FilesWriter(w.FilesWriterConfig(), target=sys.argv[1])
temps = []
for name in sys.argv[2:]:
    *parts, filename = name.split("/")
    handle = writer.open(WriteTarget(sys.argv[1], tuple(parts), filename, {}))
    os.write(handle.fd, b"unfinished")
    temps.append(os.path.join(writer.partial_path, handle.temp))
print(json.dumps(temps), flush=True)
sys.stdin.read()
"""


class OtherReceiver:
    """A ``files`` writer in a process of its own with unfinished files (no O_TMPFILE), until ``kill``."""

    def __init__(self, root: Path, *names: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _OTHER_RECEIVER, str(root), *names],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.temps = [Path(p) for p in json.loads(self.proc.stdout.readline())]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def other_receiver(root: Path) -> Iterator[Callable[..., OtherReceiver]]:
    started: list[OtherReceiver] = []

    def start(*names: str) -> OtherReceiver:
        started.append(OtherReceiver(root, *names))
        return started[-1]

    yield start
    for other in started:
        other.kill()


def test_cleanup_spares_unfinished_files_of_another_running_receiver(make_writer: Any, root: Path,
                                                                       other_receiver: Any) -> None:
    first = other_receiver("run/a.dat", "b.dat")
    mine = make_writer()
    handle = write_all(mine, item(root, "run/mine.dat", b"mine"), b"mine")
    assert make_writer().cleanup(time.time() + 3600) == 0  # a second receiver starts on the same target
    assert all(temp.read_bytes() == b"unfinished" for temp in first.temps)
    first.kill()  # SIGKILL: its partial directory stays behind, unlocked
    assert make_writer().cleanup(time.time()) == 2  # the next start takes it
    assert not first.temps[0].parent.exists()
    mine.commit([handle])  # a writer alive in this process was spared all along
    assert (root / "run" / "mine.dat").read_bytes() == b"mine"


def test_cleanup_removes_stale_temp_files_only(make_writer: Any, root: Path, other_receiver: Any) -> None:
    crashed = other_receiver("run/stale.dat")
    crashed.kill()
    (root / "run" / "kept.dat").write_bytes(b"a stored file")
    (root / "run" / "notes.0123456789ab.part").write_bytes(b"a user's file with an old temp-file name")
    (root / ".hidra-partial" / "0123456789abcdef").write_bytes(b"left by an earlier version")
    (root / ".hidra-partial" / "hdf5").mkdir()  # another writer's directory
    assert make_writer().cleanup(time.time() + 1) == 2
    assert sorted(p.name for p in (root / "run").iterdir()) == ["kept.dat", "notes.0123456789ab.part"]
    assert [p.name for p in (root / ".hidra-partial").iterdir()] == ["hdf5"]


def test_cleanup_can_be_turned_off(make_writer: Any, root: Path, other_receiver: Any) -> None:
    crashed = other_receiver("stale.dat")
    crashed.kill()
    assert make_writer(clean_stale_parts=False).cleanup(time.time() + 1) == 0
    assert crashed.temps[0].exists()


def _stored(root: Path) -> dict[str, bytes]:
    """Every file in ``root`` (not below), after checking that the reserved directory holds no file."""
    assert [p for p in (root / ".hidra-partial").rglob("*") if not p.is_dir()] == []
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}


def _store(writer: FilesWriter, root: Path, name: str, data: bytes) -> None:
    assert writer.commit_each([write_all(writer, item(root, name, data), data)]) == [None]


def test_new_version_of_a_stored_file_keeps_the_earlier_one(make_writer: Any, root: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    writer = make_writer()
    (root / "a.bin.~1~").write_bytes(b"a user's file that looks like a backup")
    _store(writer, root, "a.bin", b"part1")  # cat part1 > a.bin
    with caplog.at_level(logging.INFO, logger="hidra_files.writer"):
        _store(writer, root, "a.bin", b"part2, another content")  # a.bin re-created
    _store(writer, root, "a.bin", b"third")
    assert _stored(root) == {
        "a.bin": b"third", "a.bin.~1~": b"a user's file that looks like a backup", "a.bin.~2~": b"part1",
        "a.bin.~3~": b"part2, another content"}
    assert "the earlier version is kept as a.bin.~2~" in caplog.text


def test_earlier_version_that_the_new_one_begins_with_makes_no_backup(make_writer: Any, root: Path) -> None:
    writer = make_writer()
    for _ in range(2):
        _store(writer, root, "run/a.bin", b"same bytes")
    _store(writer, root, "run/b.bin", b"1234")
    _store(writer, root, "run/b.bin", b"5678")  # same size, other bytes
    _store(writer, root, "run/c.bin", b"")
    _store(writer, root, "run/c.bin", b"written after the empty file was sent")
    _store(writer, root, "run/d.bin", b"sent half")  # sent while still being written ...
    _store(writer, root, "run/d.bin", b"sent half-written, then grown")  # ... then complete
    _store(writer, root, "run/e.bin", b"longer earlier version")
    _store(writer, root, "run/e.bin", b"longer")  # a shorter new version is no superset: backed up
    assert sorted(p.name for p in (root / "run").iterdir()) == [
        "a.bin", "b.bin", "b.bin.~1~", "c.bin", "d.bin", "e.bin", "e.bin.~1~"]
    assert (root / "run" / "d.bin").read_bytes() == b"sent half-written, then grown"


def test_existing_overwrite_replaces_the_stored_file(make_writer: Any, root: Path) -> None:
    writer = make_writer(existing="overwrite")
    _store(writer, root, "a.bin", b"part1")
    _store(writer, root, "a.bin", b"part2")
    assert _stored(root) == {"a.bin": b"part2"}


@pytest.mark.parametrize("count", [3, 8], ids=["fsync-each", "syncfs"])
def test_one_bad_file_fails_alone_in_a_group_commit(make_writer: Any, root: Path, count: int) -> None:
    writer = make_writer()
    (root / "run" / "f1.dat").mkdir(parents=True)  # a directory stands where a file should go
    names = [f"run/f{n}.dat" for n in range(count)]
    handles = [write_all(writer, item(root, name, name.encode()), name.encode()) for name in names]
    errors = writer.commit_each(handles)
    assert isinstance(errors[1], IsADirectoryError) and "directory stands where the file" in str(errors[1])
    assert errors[:1] + errors[2:] == [None] * (count - 1)
    assert all((root / n).read_bytes() == n.encode() for n in names if n != "run/f1.dat")
    writer.abort(handles[1])
    assert sorted(p.name for p in (root / "run").iterdir()) == sorted(n[4:] for n in names)


@pytest.mark.parametrize("mtime", [2**80, float("nan"), -5.0, float("inf")])
def test_unusable_file_mod_time_is_ignored_and_leaves_nothing_behind(make_writer: Any, root: Path,
                                                                     mtime: float) -> None:
    writer = make_writer()
    before = time.time()
    writer.commit([write_all(writer, item(root, "m.dat", b"m", mtime=mtime), b"m")])
    assert list(_stored(root)) == ["m.dat"]
    assert (root / "m.dat").stat().st_mtime >= before - 1


def test_path_longer_than_the_file_system_allows_is_refused(make_writer: Any, root: Path) -> None:
    writer = make_writer()
    parts = tuple("d" * 250 for _ in range(17))
    with pytest.raises(PathRefused, match="longer than the file system allows"):
        writer.open(WriteTarget(str(root), parts, "f.dat", {}))


def test_stored_file_appears_with_in_moved_to_for_target_watchers(make_writer: Any, root: Path) -> None:
    """A chained sender's inotify source reacts to IN_CLOSE_WRITE or IN_MOVED_TO, never to a bare IN_CREATE."""
    inotify_simple = pytest.importorskip("inotify_simple")
    INotify, flags = inotify_simple.INotify, inotify_simple.flags
    (root / "run").mkdir()
    watcher = INotify()
    try:
        watcher.add_watch(str(root / "run"), flags.MOVED_TO | flags.CLOSE_WRITE)
        writer = make_writer()
        writer.commit([write_all(writer, item(root, f"run/f{n}.dat", b"x"), b"x") for n in range(6)])
        events = watcher.read(timeout=1000)
    finally:
        watcher.close()
    assert sorted(e.name for e in events if e.mask & flags.MOVED_TO) == [f"f{n}.dat" for n in range(6)]
