"""The snapshots the sender's router loop and the receiver's loop publish for the REST thread.

Built in the loop's own thread, from its own state, at most twice a second; the result is a new dict of plain
JSON values that nobody changes afterwards (``GET /statistics`` and ``/clients`` answer it as it is).
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from hidra_core.host.kernel import Endpoints

if TYPE_CHECKING:  # pragma: no cover
    from hidra_core.receiver.commit import CommitThread
    from hidra_core.receiver.loop import Receiver
    from hidra_core.sender.router import Sender

__all__ = ["STATES", "receiver_snapshot", "sender_snapshot", "where"]

#: what ``GET /status`` says a process is doing
STATES = ("starting", "running", "draining", "stopping")


def sender_snapshot(sender: Sender, state: str) -> dict[str, Any]:
    link, now = sender.link, time.monotonic()
    pipelines = [{"index": lane.index, "sending": lane.current.event.file_id if lane.current is not None else None,
                  "member": lane.member} for lane in sender.lanes]
    members = [{"member": m.index, "data": m.data, "up": m.index in link.live,
                "receiver": m.receiver.decode(errors="replace") if m.receiver is not None else None,
                "beacon_s_ago": round(now - m.beacon_at, 3) if m.beacon_at else None} for m in link.members]
    counters = dict(sender.stats)
    # NOTE: the workers retry a stat or removal in place; the router, a read (the file is asked for again)
    counters["fetch_retries"] += sum(lane.fetching.worker.retries for lane in sender.lanes)
    statistics = {"counters": counters, "source": sender.source_counters.snapshot(), "queued": len(sender._queue),
                  "delayed": len(sender._delayed_events), "in_flight": len(link.in_flight),
                  "retrying": len(link.retrying), "held_bytes": sender.handoff.held,
                  "pipelines": pipelines, "storage": members}
    return {"state": state, "statistics": statistics, "clients": sender.clients.status()}


def receiver_snapshot(receiver: Receiver, state: str, committer: CommitThread | None) -> dict[str, Any]:
    statistics = {"counters": dict(receiver.stats), "unfinished": len(receiver._partials),
                  "unfinished_dropped": receiver._partials.dropped, "commit_backlog": receiver._commits.qsize()}
    if committer is not None:
        statistics["durable_latency_s"] = committer.durable.snapshot()
        statistics["commit_s"] = committer.commit_time.snapshot()
    return {"state": state, "statistics": statistics}


def where(process: Any) -> dict[str, Any]:
    """What ``GET /status`` says the process moves data from or to."""
    if process.role == "sender":
        source = process.config.source
        return {"source": {"type": source.type, "root": getattr(process.source, "root", None) or None},
                "storage": [data for data, _conf in process.config.storage.members]}
    # NOTE: the bound address (the configured one may say port 0); read once, by the thread that owns the socket
    return {"target": os.path.abspath(process.config.target), "writers": list(process.config.writers),
            "data": Endpoints.bound(process.data)}
