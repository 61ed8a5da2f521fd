"""Convention 7: the kernel never imports a plugin, and importing it pulls in no heavy dependency."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hidra_core

KERNEL_DIR = Path(hidra_core.__file__).parent
PLUGIN_PACKAGES = ("hidra_inotify", "hidra_files", "hidra_zmq", "hidra_eiger", "hidra_watchdog", "hidra_pilatus",
                   "hidra_ingest", "hidra_hdf5", "hidra_databuffer")
HEAVY = ("inotify_simple", "h5py", "hdf5plugin", "bsread", "cbor2", "requests", "httpx", "fastapi", "uvicorn",
         "starlette", "prometheus_client", "watchdog", "bitshuffle", "fabio", *PLUGIN_PACKAGES)
MODULES = ["hidra_core", "hidra_core.config", "hidra_core.host.plugins", "hidra_core.host.drivers",
           "hidra_core.sender.router", "hidra_core.receiver.loop", "hidra_core.cli.main"]

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("module", MODULES)
def test_import_leaves_heavy_and_plugin_modules_out(module: str, tmp_path: Path) -> None:
    # a fresh interpreter: this test process has long since imported plugins through discovery tests
    out = subprocess.run([sys.executable, "-c", _PROBE, module], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    loaded = {name.partition(".")[0] for name in json.loads(out)}
    assert module.partition(".")[0] in loaded  # the probe really imported something
    assert sorted(loaded.intersection(HEAVY)) == []


def _kernel_sources() -> list[Path]:
    files = sorted(KERNEL_DIR.rglob("*.py"))
    assert len(files) > 10, files
    return files


def _plugin_imports(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every import of a plugin package, including by string (``import_module``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.partition(".")[0] in PLUGIN_PACKAGES]
    return found


def test_no_kernel_module_imports_a_plugin_package() -> None:
    offenders = [f"{path.relative_to(KERNEL_DIR)}:{line}: {name}" for path in _kernel_sources()
                 for line, name in _plugin_imports(path.read_text())]
    assert offenders == []


def test_the_import_scan_sees_every_form_of_import() -> None:
    sample = ("import os, hidra_zmq\nfrom hidra_files.writer import FilesWriter\n"
              "x = importlib.import_module('hidra_inotify.source')\nfrom . import hidra_zmq\ny = 'hidra_zmqx'\n")
    assert _plugin_imports(sample) == [(1, "hidra_zmq"), (2, "hidra_files.writer"), (3, "hidra_inotify.source")]


_PUBLIC = ("hidra_core", "hidra_core.testing")


def _kernel_imports(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("hidra_core")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("hidra_core"):
            found.append((node.lineno, node.module or ""))
    return found


def test_plugins_use_only_the_public_surface() -> None:
    """Plugins import ``hidra_core`` and ``hidra_core.testing`` only, so moving a kernel module never breaks one."""
    root = KERNEL_DIR.parent
    sources = sorted([*root.glob("plugins/*/hidra_*/**/*.py"), *root.glob("plugins/*/tests/*.py"),
                      *root.glob("contrib/*/hidra_*/**/*.py"), *root.glob("contrib/*/tests/*.py")])
    assert len(sources) > 8, sources
    offenders = [f"{path.relative_to(root)}:{line}: {name}" for path in sources
                 for line, name in _kernel_imports(path.read_text()) if name not in _PUBLIC]
    assert offenders == []
