"""A schemathesis run against each process's own OpenAPI spec, during a transfer, finds no server error.

NOTE: ``POST /drain`` and ``/stop`` are left out of the generated requests: any valid one stops the process, and
every later request would then fail for that reason alone; test_rest.py sends them bad bodies by hand.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hidra_proc import intact, wait_until, write_file

pytestmark = pytest.mark.integration

TOKEN = "schema-t0ken"


def _schemathesis(url: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    """``st run`` in ``cwd`` (where it leaves its cache)."""
    st = Path(sys.executable).parent / "st"
    return subprocess.run([str(st), "run", f"{url}/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", "20", "--exclude-method", "POST", "--seed", "12", *extra],
                          capture_output=True, text=True, timeout=240, cwd=cwd)


def test_schemathesis_finds_no_server_error_in_the_sender_and_receiver_apis(storage_path: Any) -> None:
    pair = storage_path
    receiver = pair.start_receiver()
    sender = pair.start_sender(f"sender.rest.token={TOKEN}")
    write_file(pair.source / "a" / "before.raw", 10_000)
    wait_until(lambda: intact(pair.target, "a/before.raw", 10_000), 60, "the first file stored")
    for url, extra in ((sender.rest_url(), ["--header", f"Authorization: Bearer {TOKEN}"]),
                       (receiver.rest_url(), [])):
        result = _schemathesis(url, pair.base, *extra)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "No issues found" in result.stdout, result.stdout[-4000:]
    write_file(pair.source / "a" / "after.raw", 20_000)
    wait_until(lambda: intact(pair.target, "a/after.raw", 20_000), 60, "a file stored after the runs")
    assert sender.proc.poll() is None and receiver.proc.poll() is None
    assert "Traceback" not in sender.text() + receiver.text()
