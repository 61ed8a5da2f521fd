"""CONFORMANCE.md stays true: every node id it names exists (found with ``ast``, no collection run), every §14
paragraph of databuffer.md and every §13 fix F1–F11 has at least one mapped item, and every item names a test."""
from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1]
MAP = PLUGIN / "CONFORMANCE.md"
# NOTE: the spec lives outside the repository (../shared/docs next to the checkout); these are its §14 paragraph
# headings and §13 fixes, checked against the spec itself whenever it is there
PARAGRAPHS = ["Broker REST", "Request and transport", "Audit and `.err`", "Buffer and query", "Writer HDF5"]
FIXES = [f"F{n}" for n in range(1, 12)]
SPEC_CANDIDATES = [PLUGIN.parents[2] / "shared/docs/databuffer.md", PLUGIN.parents[1] / "shared/docs/databuffer.md"]
NODE = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+?)(?:\[[^\]`]*\])?`")
ROW = re.compile(r"^\| *([A-Z]\d+) *\|(.*)\|(.*)\| *$")


def _sections() -> dict[str, list[tuple[str, str, list[str]]]]:
    """``## heading`` -> rows (key, item, node ids)."""
    sections: dict[str, list[tuple[str, str, list[str]]]] = {}
    current: list[tuple[str, str, list[str]]] | None = None
    for line in MAP.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None and (row := ROW.match(line)):
            current.append((row[1], row[2].strip(), ["::".join(m) for m in NODE.findall(row[3])]))
    return sections


@cache
def _tests_of(path: Path) -> frozenset[str]:
    """``test_x`` and ``Class::test_x`` defined in a test file."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            found.add(node.name)
        elif isinstance(node, ast.ClassDef):
            found.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"))
    return frozenset(found)


def test_every_mapped_node_id_exists() -> None:
    missing = []
    for rows in _sections().values():
        for key, _, ids in rows:
            for node_id in ids:
                path, name = node_id.split("::", 1)
                if not (PLUGIN / path).is_file() or name not in _tests_of(PLUGIN / path):
                    missing.append(f"{key}: {node_id}")
    assert not missing, f"CONFORMANCE.md names tests that do not exist: {missing}"


def test_every_item_names_at_least_one_test() -> None:
    bare = [f"{key} {item}" for rows in _sections().values() for key, item, ids in rows if not ids]
    assert not bare, f"CONFORMANCE.md items without a test: {bare}"


def test_every_checklist_paragraph_and_fix_is_mapped() -> None:
    sections = _sections()
    empty = [name for name in PARAGRAPHS if not sections.get(name)]
    assert not empty, f"§14 paragraphs of databuffer.md without a mapped item in CONFORMANCE.md: {empty}"
    fixed = {key for key, _, ids in sections.get("§13 fixes", []) if ids}
    assert fixed == set(FIXES), f"§13 fixes without a mapped item: {sorted(set(FIXES) - fixed)}"


def test_the_headings_are_the_specs_own() -> None:
    spec = next((path for path in SPEC_CANDIDATES if path.is_file()), None)
    if spec is None:
        return  # NOTE: a checkout without the spec next to it: the constants above stand in for it
    text = spec.read_text(encoding="utf-8")
    checklist = text.split("## 14.", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"\*\*([^*]+)\*\*:", checklist) == PARAGRAPHS
    keep_fix = text.split("## 13.", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| (F\d+) \|", keep_fix, flags=re.M) == FIXES
