"""Receiving-side path safety (hidra4-protocol.md §9 D5): wire names are validated, nothing leaves the root."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hidra_core import PathRefused
from hidra_core.paths import SafeTree, split_checked

# --- split_checked ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("relative_path", "filename", "expected"), [
    ("", "f.cbf", ((), "f.cbf")),
    ("scan1", "f.cbf", (("scan1",), "f.cbf")),
    ("current/raw/scan_001", "img_00001.tif", (("current", "raw", "scan_001"), "img_00001.tif")),
    ("a b/ü-é", "name with spaces.h5", (("a b", "ü-é"), "name with spaces.h5")),
    ("...", "..hidden", (("...",), "..hidden")),
    (".cache", ".f", ((".cache",), ".f")),
])
def test_accepts_normal_names(relative_path: str, filename: str, expected: tuple) -> None:
    assert split_checked(relative_path, filename) == expected


@pytest.mark.parametrize(("relative_path", "filename", "why"), [
    ("../x", "f", "'..'"),
    ("a/../b", "f", "'..'"),
    ("a/..", "f", "'..'"),
    ("..", "f", "'..'"),
    ("./a", "f", "'.'"),
    ("/etc", "passwd", "absolute"),
    ("/", "f", "absolute"),
    ("a//b", "f", "empty"),
    ("a/", "f", "empty"),
    ("a\x00b", "f", "forbidden characters"),
    ("a\x1bb", "f", "forbidden characters"),
    ("a\nb", "f", "forbidden characters"),
    ("a\x7fb", "f", "forbidden characters"),
    ("a\\b", "f", "forbidden characters"),
    ("..\\..\\windows", "f", "forbidden characters"),
    ("", "a/b", "not a single path component"),
    ("", "/etc/passwd", "not a single path component"),
    ("", "../f", "not a single path component"),
    ("", ".", "'.'"),
    ("", "..", "'..'"),
    ("", "", "empty"),
    ("", "f\x00.cbf", "forbidden characters"),
    ("", "f\t.cbf", "forbidden characters"),
    ("", "f\\g", "forbidden characters"),
])
def test_refuses_unsafe_names(relative_path: str, filename: str, why: str) -> None:
    with pytest.raises(PathRefused) as info:
        split_checked(relative_path, filename)
    assert why in str(info.value)


@pytest.mark.parametrize(("relative_path", "filename", "why"), [
    ("", "evil\udcff", "is not valid UTF-8 text"),  # a lone surrogate, as JSON "evil\udcff" decodes
    ("d\udcff/e", "f", "is not valid UTF-8 text"),
    ("", "n" * 256, "component of 256 bytes; the file system allows 255"),
    ("", "é" * 128, "component of 256 bytes"),
    ("d" * 300, "f", "component of 300 bytes"),
    ("/".join(["d" * 200] * 21), "f", "the file system allows 4095"),
    (".hidra-partial", "f", "reserved for the receiver's unfinished files"),
    ("run/.hidra-partial", "f", "reserved"),
    ("", ".hidra-partial", "reserved"),
])
def test_names_that_are_not_text_or_over_the_file_system_limits_are_refused(relative_path: str, filename: str,
                                                                             why: str) -> None:
    with pytest.raises(PathRefused) as info:
        split_checked(relative_path, filename)
    assert why in str(info.value)


def test_names_at_the_file_system_limits_are_accepted() -> None:
    parts = ["d" * 254] * 15
    assert split_checked("/".join(parts), "n" * 255) == (tuple(parts), "n" * 255)


# --- SafeTree -----------------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "target"
    r.mkdir()
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "outside"
    o.mkdir()
    return o


def test_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SafeTree(str(tmp_path / "absent"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError):
        SafeTree(str(tmp_path / "file"))


def test_creates_directories_below_root(root: Path) -> None:
    tree = SafeTree(str(root))
    path = tree.directory(("a", "b", "c"))
    assert path == str(root / "a" / "b" / "c")
    assert (root / "a" / "b" / "c").is_dir()
    assert tree.directory(("a", "b", "c")) == path  # again: same answer, nothing changes
    assert tree.directory(("a", "x")) == str(root / "a" / "x") and (root / "a" / "x").is_dir()
    assert tree.directory(()) == str(root)


def test_root_reached_through_a_symlink_is_resolved(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "link-to-target"
    link.symlink_to(root)
    tree = SafeTree(str(link))
    assert tree.root == str(root.resolve())
    tree.directory(("a",))
    assert (root / "a").is_dir()


def test_refuses_a_symlink_inside_root_pointing_outside(root: Path, outside: Path) -> None:
    (root / "evil").symlink_to(outside)
    tree = SafeTree(str(root))
    with pytest.raises(PathRefused, match="symlink"):
        tree.directory(("evil", "sub"))
    with pytest.raises(PathRefused, match="symlink"):
        tree.directory(("evil",))
    assert list(outside.iterdir()) == []  # nothing created out there


def test_refuses_a_deeper_symlink_pointing_outside(root: Path, outside: Path) -> None:
    (root / "a").mkdir()
    (root / "a" / "up").symlink_to("../..")  # relative: resolves to the parent of root
    with pytest.raises(PathRefused):
        SafeTree(str(root)).directory(("a", "up", "outside", "x"))
    assert list(outside.iterdir()) == []


def test_refuses_a_dangling_symlink(root: Path, outside: Path) -> None:
    (root / "dangling-out").symlink_to(outside / "not-yet")
    (root / "dangling-in").symlink_to(root / "not-yet")
    tree = SafeTree(str(root))
    for name in ("dangling-out", "dangling-in"):
        with pytest.raises(PathRefused):
            tree.directory((name, "x"))
    assert not (outside / "not-yet").exists() and not (root / "not-yet").exists()


def test_allows_a_symlink_pointing_inside_root(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    (root / "self").symlink_to(".")
    tree = SafeTree(str(root))
    assert tree.directory(("alias", "sub")) == str(root / "alias" / "sub")
    assert (root / "real" / "sub").is_dir()
    tree.directory(("self", "s2"))
    assert (root / "s2").is_dir()


def test_refuses_when_a_component_is_a_regular_file(root: Path) -> None:
    (root / "a").mkdir()
    (root / "a" / "data.h5").write_bytes(b"\x89HDF")
    tree = SafeTree(str(root))
    with pytest.raises(PathRefused, match="not a directory"):
        tree.directory(("a", "data.h5", "sub"))
    with pytest.raises(PathRefused, match="not a directory"):
        tree.directory(("a", "data.h5"))
    assert (root / "a" / "data.h5").read_bytes() == b"\x89HDF"


def test_a_symlink_to_a_file_inside_root_is_refused(root: Path) -> None:
    (root / "f").write_text("x")
    (root / "link").symlink_to(root / "f")
    with pytest.raises(PathRefused):
        SafeTree(str(root)).directory(("link", "x"))


def test_a_known_directory_replaced_by_a_symlink_is_refused(root: Path, outside: Path) -> None:
    tree = SafeTree(str(root))
    tree.directory(("a",))
    os.rmdir(root / "a")
    (root / "a").symlink_to(outside)
    with pytest.raises(PathRefused):
        tree.directory(("a",))


def test_a_known_directory_removed_meanwhile_is_created_again(root: Path) -> None:
    tree = SafeTree(str(root))
    tree.directory(("a", "b"))
    os.rmdir(root / "a" / "b")
    assert tree.directory(("a", "b")) == str(root / "a" / "b")
    assert (root / "a" / "b").is_dir()


def test_a_known_directory_below_a_component_replaced_by_a_symlink_is_refused(root: Path, outside: Path) -> None:
    tree = SafeTree(str(root))
    tree.directory(("a", "b"))
    os.rmdir(root / "a" / "b")
    os.rmdir(root / "a")
    (outside / "b").mkdir()
    (root / "a").symlink_to(outside)
    with pytest.raises(PathRefused):
        tree.directory(("a", "b"))
