"""``Transfer.store`` and the client's file store: safe names only, atomic writes (hidra4-protocol.md §6.3, D5)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from hidra_core.client import HidraClientError, Transfer
from hidra_core.client._store import FileStore
from hidra_core.errors import PathRefused

# NOTE: tests/ on sys.path makes the `legacy` test package (emulator, fake sender) importable from here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from legacy.fakesender import FakeSender, make_messages  # noqa: E402


def _meta(relative_path: Any, filename: Any, **extra: Any) -> dict[str, Any]:
    return {"relative_path": relative_path, "filename": filename, **extra}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_writes_below_the_base_with_mod_time(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path))
    path = store.write(_meta("current/raw", "a.cbf", file_mod_time=1700000000.5), b"abc")
    assert path == str(tmp_path / "current" / "raw" / "a.cbf")
    assert Path(path).read_bytes() == b"abc"
    assert os.stat(path).st_mtime == 1700000000.5
    assert store.write(_meta("", "top.raw"), b"") == str(tmp_path / "top.raw")
    store.write(_meta("current/raw", "a.cbf"), b"new")  # a re-sent file replaces the old one
    assert Path(path).read_bytes() == b"new"
    assert _tree(tmp_path) == ["current", "current/raw", "current/raw/a.cbf", "top.raw"], "no temp files left"


@pytest.mark.parametrize(("relative_path", "filename"), [
    ("../x", "f"), ("..", "f"), ("/etc", "passwd"), ("a//b", "f"), ("a/./b", "f"), ("", "a/b"), ("", ".."),
    ("", ""), ("a\\b", "f"), ("", "f\x00"), (None, 5), (3, "f"),
])
def test_refuses_unsafe_names_and_writes_nothing(tmp_path: Path, relative_path: Any, filename: Any) -> None:
    base = tmp_path / "base"
    base.mkdir()
    with pytest.raises(PathRefused):
        FileStore(str(base)).write(_meta(relative_path, filename), b"evil")
    assert _tree(tmp_path) == ["base"]


def test_refuses_symlinks_out_of_the_base(tmp_path: Path) -> None:
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "link").symlink_to(outside)
    with pytest.raises(PathRefused, match="symlink"):
        FileStore(str(base)).write(_meta("link", "f"), b"evil")
    assert list(outside.iterdir()) == []


def test_dirs_not_to_create_must_exist(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path), dirs_not_to_create=["current", "commissioning"])
    with pytest.raises(PathRefused, match="dirs_not_to_create"):
        store.write(_meta("current/raw", "f"), b"x")
    assert _tree(tmp_path) == []
    (tmp_path / "current").mkdir()
    assert store.write(_meta("current/raw", "f"), b"x") == str(tmp_path / "current/raw/f")
    assert store.write(_meta("local", "f"), b"y") == str(tmp_path / "local/f")  # only listed ones are guarded


def test_a_failed_write_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        FileStore(str(tmp_path)).write(_meta("", "f"), b"new")
    assert _tree(tmp_path) == ["f"]
    assert (tmp_path / "f").read_bytes() == b"old", "readers never see a partial file"


def test_base_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileStore(str(tmp_path / "missing"))


@pytest.fixture
def sender(zmq_context: zmq.Context) -> Iterator[FakeSender]:
    with FakeSender(zmq_context) as fake:
        yield fake


def test_transfer_store(tmp_path: Path, sender: FakeSender, zmq_context: zmq.Context) -> None:
    data = os.urandom(3000)
    t = Transfer("STREAM", context=zmq_context, dirs_not_to_create=["current"])
    try:
        push = sender.data_to(t.start(["127.0.0.1", 0]))
        for message in make_messages("a.cbf", data, 1000, relative_path="raw/scan1"):
            push.send_multipart(message)
        assert t.store(str(tmp_path), 5000) == str(tmp_path / "raw/scan1/a.cbf")
        assert (tmp_path / "raw/scan1/a.cbf").read_bytes() == data
        evil = make_messages("x", b"evil", 10, relative_path="../x")[0]
        push.send_multipart(evil)
        with pytest.raises(PathRefused):
            t.store(str(tmp_path), 5000)
        push.send_multipart(make_messages("f", b"1", 10, relative_path="current/raw")[0])
        with pytest.raises(PathRefused, match="dirs_not_to_create"):
            t.store(str(tmp_path), 5000)
        assert not (tmp_path.parent / "x").exists()
        assert t.store(str(tmp_path), 50) is None
    finally:
        t.close()
    meta_only = Transfer("STREAM_METADATA", context=zmq_context)
    with meta_only, pytest.raises(HidraClientError, match="nothing to store"):
        meta_only.store(str(tmp_path))
    assert json.loads(evil[0])["relative_path"] == "../x"
