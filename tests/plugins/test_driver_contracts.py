"""Convention 18 for drivers: every first-party driver runs its role's contract, every installed driver meets the
rules all drivers share (found by name, strict frozen config)."""
from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path
from typing import Any

import pytest

from hidra_core.host.drivers import ROLES, load_driver_class
from hidra_core.host.plugins import _dist_name, entry_points_of
from hidra_core.cli.reference import FIRST_PARTY

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = {"event source": ("EventSourceContract", "StreamSourceContract", "TreeSourceContract"),
             "fetcher": ("FetcherContract",), "transport": ("TransportContract",),
             "writer": ("WriterContract", "SeriesWriterContract")}


def _installed() -> list[Any]:
    """``(role, entry point)`` of every driver installed for real (not the fake distributions of the tests)."""
    found = []
    for role, (group, _base) in ROLES.items():
        for ep in entry_points_of(group):
            location = Path(str(ep.dist.locate_file(""))).resolve() if ep.dist is not None else REPO
            if REPO / "tests" / "data" not in (location, *location.parents):
                found.append(pytest.param(role, ep, id=f"{group}:{ep.name}:{_dist_name(ep)}"))
    return found


def _contract_suites(tests_dir: Path) -> set[tuple[str, str]]:
    """``(contract class name, driver_name)`` of every contract subclass defined in ``tests_dir``."""
    suites = set()
    for path in tests_dir.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "driver_name" for t in stmt.targets)
                        and isinstance(stmt.value, ast.Constant)):
                    suites.update((base, stmt.value.value) for base in bases)
    return suites


@pytest.mark.parametrize("role, ep", [p for p in _installed() if _dist_name(p.values[1]) in FIRST_PARTY])
def test_first_party_driver_has_a_contract_suite(role: str, ep: Any) -> None:
    tests_dir = REPO / "plugins" / _dist_name(ep) / "tests"
    suites = _contract_suites(tests_dir)
    assert any((contract, ep.name) in suites for contract in CONTRACTS[role]), (
        f"add a {' or '.join(CONTRACTS[role])} subclass with driver_name = {ep.name!r} to"
        f" {tests_dir.relative_to(REPO)}")


def test_every_first_party_distribution_is_installed() -> None:
    # NOTE: installed as a distribution, drivers or not: hidra-eiger ships only its simulator so far
    installed = {dist.metadata["Name"] for dist in importlib.metadata.distributions()}
    assert set(FIRST_PARTY) <= installed, "run bash scripts/install"


@pytest.mark.parametrize("role, ep", _installed())
def test_installed_driver_loads_and_has_a_strict_config(role: str, ep: Any) -> None:
    cls = load_driver_class(role, ep.name)
    assert issubclass(cls, ROLES[role][1])
    config = cls.config_class.model_config
    assert (config.get("frozen"), config.get("extra")) == (True, "forbid"), f"{cls.config_class} must be strict"
