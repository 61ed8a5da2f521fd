"""``hidra_core.Counters``: what an event source counts for /metrics, labelled counters bounded in number."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hidra_core import Counters
from hidra_core.rest.metrics import render_metrics


def _samples(counters: Counters) -> dict[str, float]:
    snapshot = {"statistics": {"counters": {}, "source": counters.snapshot()}}
    text = render_metrics("sender", snapshot, None).decode()
    return {s.name + "".join(f"[{v}]" for v in s.labels.values()): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_frames_lost_are_kept_for_the_last_series_only_so_metrics_stay_bounded() -> None:
    counters = Counters(keep=3)
    for n in range(10):
        counters.add("frames_lost", n + 1, series=f"scan_{n}")
    counters.add("frames_lost", 5, series="scan_7")  # NOTE: a change makes a series the newest again
    counters.add("overflows")
    samples = _samples(counters)
    assert {k: v for k, v in samples.items() if k.startswith("hidra_sender_source_frames_lost_total")} == {
        "hidra_sender_source_frames_lost_total[scan_8]": 9, "hidra_sender_source_frames_lost_total[scan_9]": 10,
        "hidra_sender_source_frames_lost_total[scan_7]": 13}
    assert samples["hidra_sender_source_overflows_total"] == 1


@pytest.mark.parametrize("call", [
    lambda c: c.add("Frames Lost"), lambda c: c.add("lost", -1), lambda c: c.add("lost", series="a") or c.add("lost"),
    lambda c: c.add("lost", series="a") or c.add("lost", detector="b"), lambda c: c.add("lost") or c.add("lost", x="1"),
])
def test_a_counter_a_plugin_misuses_is_refused_at_once(call) -> None:
    with pytest.raises(ValueError):
        call(Counters())
