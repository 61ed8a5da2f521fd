"""The documentation cannot drift: generated reference, a heading per hook, the README's two commands, examples."""
from __future__ import annotations

import ast
import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hidra_core import hookspecs
from hidra_core.cli.reference import FIRST_PARTY, render

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
REGENERATE = ".venv/bin/hidra config reference > docs/config-reference.md"


def _fenced(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S)]


def _hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs)
                  if name.startswith("hidra_") and hasattr(getattr(hookspecs, name), "hidra_spec"))


def test_config_reference_is_the_generated_one() -> None:
    committed = (DOCS / "config-reference.md").read_text()
    assert committed == render(), (
        f"docs/config-reference.md is out of date with the config models; regenerate it with\n    {REGENERATE}")


def test_reference_documents_exactly_the_first_party_distributions() -> None:
    names = {_setup_name(p) for p in REPO.glob("plugins/*/setup.cfg")}
    assert names == set(FIRST_PARTY), "update hidra_core.reference.FIRST_PARTY to the distributions in plugins/"


def _setup_name(path: Path) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(path.read_text())
    return parser["metadata"]["name"]


def test_every_hook_has_a_heading_in_the_plugin_guide() -> None:
    hooks = _hook_names()
    assert len(hooks) >= 6, hooks
    guide = (DOCS / "plugin-guide.md").read_text()
    headed = set(re.findall(r"^#+ `(hidra_\w+)\(", guide, re.M))  # "### `hidra_startup(kernel)`"
    assert sorted(set(hooks) - headed) == [], "add a heading per hook to docs/plugin-guide.md"
    assert sorted(headed - set(hooks)) == [], "docs/plugin-guide.md has headings for hooks that do not exist"


def test_readme_starts_with_the_two_commands() -> None:
    commands = []
    for lang, body in _fenced((REPO / "README.md").read_text()):
        if lang in ("sh", "bash", "shell", "console", ""):
            commands += [line.split("#", 1)[0].strip() for line in body.splitlines()
                         if line.split("#", 1)[0].strip()]
    assert commands[:2] == ["bash scripts/up", "bash scripts/test"]


def test_files_quoted_in_the_plugin_guide_are_the_real_ones() -> None:
    guide = (DOCS / "plugin-guide.md").read_text()
    quoted = re.findall(r"^<!-- file: (\S+) -->\n```\w*\n(.*?)^```", guide, re.M | re.S)
    assert len(quoted) >= 4
    for path, body in quoted:
        assert body == (REPO / path).read_text(), f"docs/plugin-guide.md quotes an old version of {path}"


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_python_and_ini_examples_parse(doc: str) -> None:
    for lang, body in _fenced((DOCS / doc).read_text()):
        if lang == "python":
            ast.parse(body)
        elif lang == "ini":
            configparser.ConfigParser(interpolation=None).read_string(body)


@pytest.mark.parametrize("doc", sorted(f"docs/{p.name}" for p in DOCS.glob("*.md")))
def test_relative_links_point_to_existing_files(doc: str) -> None:
    path = REPO / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" not in target and not target.startswith("mailto:"):
            assert (path.parent / target).exists(), f"{doc} links to missing {target}"


def _python_requires(path: Path) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(path.read_text())
    return parser["options"]["python_requires"].strip()


def test_the_stated_minimum_python_is_the_one_the_code_needs() -> None:
    """Every distribution states one minimum, the README says it, and ``vermin`` finds no newer need."""
    setups = [REPO / "setup.cfg", *REPO.glob("plugins/*/setup.cfg"), *REPO.glob("contrib/*/setup.cfg")]
    stated = {str(p.relative_to(REPO)): _python_requires(p) for p in setups}
    assert set(stated.values()) == {">=3.10"}, stated
    minimum = "3.10"
    assert f"Python ≥ {minimum}" in (REPO / "README.md").read_text()
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    assert vermin, "vermin is in the test extras: pip install -e '.[test]'"
    # NOTE: --eval-annotations: pydantic evaluates annotations at run time, so `X | None` needs 3.10 there too.
    result = subprocess.run([vermin, f"--target={minimum}-", "--violations", "--no-tips", "--eval-annotations",
                             "hidra_core", "plugins", "contrib"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"code needs a newer Python than {minimum}:\n{result.stdout}{result.stderr}"
