"""contrib/grafana's dashboard asks only for metrics that a running sender and receiver serve."""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hidra_proc import intact, wait_until, write_file

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "hidra-dashboard.json"
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _served(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_of_the_dashboard_is_served(storage_path):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    wanted = {name for expr in exprs for name in re.findall(r"\bhidra_[a-z_]+\b", expr)}
    assert len(wanted) >= 20
    pair = storage_path
    pair.start_receiver()
    pair.start_sender()
    write_file(pair.source / "a.dat", 4000)
    wait_until(lambda: intact(pair.target, "a.dat", 4000), 30, "a.dat")
    served = _served(pair.sender.rest_url()) | _served(pair.receiver.rest_url())
    missing = {name for name in wanted if name not in served and not any(
        name.endswith(suffix) and name[:-len(suffix)] in served for suffix in _SUFFIXES)}
    assert missing == set()
