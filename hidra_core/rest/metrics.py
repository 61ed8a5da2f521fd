"""``GET /metrics``: the published snapshot in the Prometheus text format, from a registry of the process's own
(never prometheus-client's global one: an embedding program may have its own metrics there)."""
from __future__ import annotations

from typing import Any, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from hidra_core.counters import KEEP

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: the counters of each role's statistics: stats key -> (metric name without _total, help)
COUNTERS: dict[str, dict[str, tuple[str, str]]] = {
    "sender": {
        "sent": ("hidra_sender_files_sent", "files completely handed to the storage receiver (each send counts)"),
        "bytes": ("hidra_sender_bytes_sent", "payload bytes of the files sent"),
        "confirmed": ("hidra_sender_files_confirmed", "files the storage receiver confirmed durable"),
        "removed": ("hidra_sender_files_removed", "source files removed after their confirmation"),
        "resent": ("hidra_sender_files_resent", "files sent again (no confirmation in time, or a receiver restart)"),
        "unconfirmed": ("hidra_sender_files_unconfirmed", "files that used up storage.max_attempts"),
        "failed": ("hidra_sender_files_failed", "files the fetcher could not read"),
        "refused": ("hidra_sender_files_refused", "files refused (names that are not valid UTF-8)"),
        "lost": ("hidra_sender_files_lost", "in-memory data lost (hold full, or a stop before confirmation)"),
        "fetch_retries": ("hidra_sender_fetch_retries", "fetcher calls tried again after a retryable error (EIO,"
                          " ETIMEDOUT, ...)"),
    },
    "receiver": {
        "stored": ("hidra_receiver_files_stored", "files made durable (and confirmed)"),
        "bytes": ("hidra_receiver_bytes_stored", "payload bytes of the files stored"),
        "refused": ("hidra_receiver_messages_refused", "messages whose path was refused"),
        "malformed": ("hidra_receiver_messages_malformed", "malformed messages dropped"),
        "unknown_type": ("hidra_receiver_messages_unknown_type", "messages of an unknown type dropped"),
        "unrouted": ("hidra_receiver_messages_unrouted", "messages no writer of this receiver takes"),
        "failed": ("hidra_receiver_files_failed", "files that could not be written or made durable"),
        "alive_tests": ("hidra_receiver_alive_tests", "alive tests of HiDRA 4.x senders"),
    },
}
GAUGES: dict[str, dict[str, tuple[str, str]]] = {
    "sender": {
        "queued": ("hidra_sender_queued_files", "files waiting to be sent"),
        "delayed": ("hidra_sender_delayed_files", "files waiting until they are no longer being written"),
        "in_flight": ("hidra_sender_in_flight_files", "files sent and awaiting their storage confirmation"),
        "retrying": ("hidra_sender_retrying_files", "files not confirmed in time at least once"),
        "held_bytes": ("hidra_sender_held_bytes", "in-memory data held until storage confirms it"),
    },
    "receiver": {
        "unfinished": ("hidra_receiver_unfinished_files", "files whose chunks are still arriving"),
        "commit_backlog": ("hidra_receiver_commit_backlog_files", "complete files waiting for their group commit"),
    },
}
#: the help of counters event sources keep (others get a generic one)
SOURCE_COUNTERS = {
    "overflows": "event queue overflows of the source (inotify's kernel queue, or the source's own)",
    "rescans": "full rescans of the source tree (after an overflow)",
    "frames_lost": f"frames a series skipped at the source (gaps in its image numbers), for the last {KEEP} series",
}
HISTOGRAMS = {
    "durable_latency_s": ("hidra_receiver_durable_latency_seconds", "time from a file's first chunk to its copy"
                          " being durable"),
    "commit_s": ("hidra_receiver_commit_seconds", "time one group commit (the writers' fsyncs) takes"),
}
_CLIENT_COUNTERS = ("files", "bytes", "skipped", "abandoned", "cut_off")


def render_metrics(role: str, snapshot: Mapping[str, Any], ledger: Mapping[str, int] | None) -> bytes:
    """The text ``GET /metrics`` answers; ``ledger``: the sender's files per state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(role, snapshot, ledger))
    return generate_latest(registry)


class _Snapshot(Collector):
    def __init__(self, role: str, snapshot: Mapping[str, Any], ledger: Mapping[str, int] | None) -> None:
        self.role, self.snapshot, self.ledger = role, snapshot, ledger

    def collect(self) -> Iterator[Metric]:
        return _families(self.role, self.snapshot, self.ledger)


def _families(role: str, snapshot: Mapping[str, Any], ledger: Mapping[str, int] | None) -> Iterator[Metric]:
    statistics = snapshot.get("statistics", {})
    for key, value in statistics.get("counters", {}).items():
        name, doc = COUNTERS.get(role, {}).get(key, (f"hidra_{role}_{key}", f"the {role}'s {key} counter"))
        yield CounterMetricFamily(name, doc, value=value)
    for key, (name, doc) in GAUGES.get(role, {}).items():
        if key in statistics:
            yield GaugeMetricFamily(name, doc, value=statistics[key])
    for key, value in statistics.get("gauges", {}).items():  # NOTE: a plugin's process names its own
        yield GaugeMetricFamily(f"hidra_{role}_{key}", f"the {role}'s {key}", value=value)
    if "unfinished_dropped" in statistics:
        yield CounterMetricFamily("hidra_receiver_unfinished_dropped", "unfinished files dropped at a bound",
                                  value=statistics["unfinished_dropped"])
    for key, (name, doc) in HISTOGRAMS.items():
        if key in statistics:
            yield _histogram(name, doc, statistics[key])
    yield from _source_families(statistics.get("source", {}))
    if "storage" in statistics:
        up = GaugeMetricFamily("hidra_sender_storage_up", "1 while the storage receiver (group member) is up",
                               labels=["member", "endpoint"])
        for member in statistics["storage"]:
            up.add_metric([str(member["member"]), member["data"]], 1 if member["up"] else 0)
        yield up
    if ledger is not None:
        rows = GaugeMetricFamily("hidra_sender_ledger_files", "files in the ledger by state", labels=["state"])
        for state, n in sorted(ledger.items()):
            rows.add_metric([state], n)
        yield rows
    yield from _client_families(snapshot.get("clients"))


def _source_families(counters: Mapping[str, Any]) -> Iterator[Metric]:
    """What the event source counts (``EventSource.counters``): inotify overflows and rescans, frames lost per
    series, ..."""
    for key, value in counters.items():
        doc = SOURCE_COUNTERS.get(key, f"what the event source counts as {key}")
        if not isinstance(value, list):
            yield CounterMetricFamily(f"hidra_sender_source_{key}", doc, value=value)
            continue
        labels = sorted(value[0]["labels"]) if value else []
        family = CounterMetricFamily(f"hidra_sender_source_{key}", doc, labels=labels)
        for entry in value:
            family.add_metric([entry["labels"][label] for label in labels], entry["value"])
        yield family


def _client_families(clients: Mapping[str, Any] | None) -> Iterator[Metric]:
    if clients is None:
        return
    for key in _CLIENT_COUNTERS:
        family = CounterMetricFamily(f"hidra_sender_client_{key}", f"{key} of each analysis client data target",
                                     labels=["target"])
        for target in clients["targets"]:
            family.add_metric([target["id"]], target[key])
        yield family
    queued = GaugeMetricFamily("hidra_sender_client_queued_bytes", "bytes queued towards each analysis client",
                               labels=["target"])
    for target in clients["targets"]:
        queued.add_metric([target["id"]], target["queued_bytes"])
    yield queued
    yield GaugeMetricFamily("hidra_sender_client_registrations", "analysis client registrations",
                            value=len(clients["registrations"]))


def _histogram(name: str, doc: str, data: Mapping[str, Any]) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound, count in zip([*data["bounds"], float("inf")], data["counts"]):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=data["sum"])
