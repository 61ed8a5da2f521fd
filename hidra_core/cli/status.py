"""``hidra status [URL...]``: one table row per HiDRA process, from its REST API (``GET /status`` and
``/statistics``); ``--watch`` refreshes it in place and adds rates."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["Instance", "ask", "fetch", "render", "run"]

_TIMEOUT_S = 2.0


@dataclass
class Instance:
    url: str
    status: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    at: float = 0.0


def ask(url: str, token: str | None, body: Any = None) -> Any:
    """GET ``url`` (POST ``body`` as JSON, when given) with the bearer token; the answer's JSON. urllib's
    ``HTTPError`` (an answer that is not 2xx) and ``URLError`` (no answer) go to the caller."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as answer:
        return json.loads(answer.read())


def fetch(url: str, token: str | None) -> Instance:
    """The instance's status and statistics, or the reason it could not be asked."""
    base = url.rstrip("/")
    found = Instance(base, at=time.monotonic())
    try:
        for name in ("status", "statistics"):
            setattr(found, name, ask(f"{base}/{name}", token))
    except urllib.error.HTTPError as exc:
        found.error = f"HTTP {exc.code}" + (" (a token is needed: --token)" if exc.code == 401 else "")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        found.error = f"unreachable: {getattr(exc, 'reason', exc)}"
    return found


def _counter(instance: Instance, *keys: str) -> int:
    counters = instance.statistics.get("counters", {})
    return sum(int(counters.get(key, 0)) for key in keys)


def _rate(now: Instance, before: Instance | None, *keys: str) -> str:
    if before is None or before.error or now.error or now.at <= before.at:
        return ""
    return f"{(_counter(now, *keys) - _counter(before, *keys)) / (now.at - before.at):,.1f}/s"


def _row(now: Instance, before: Instance | None) -> list[str]:
    if now.error:
        return [now.url, "", f"[red]{now.error}[/red]", *[""] * 6]
    st, stats = now.status, now.statistics
    role = st.get("role", "?")
    if role == "sender":
        source = st.get("source") or {}
        where = f"{source.get('type', '?')} {source.get('root') or ''} -> {', '.join(st.get('storage', []))}"
        files = f"{_counter(now, 'sent'):,} sent, {_counter(now, 'confirmed'):,} confirmed"
        waiting = f"{stats.get('queued', 0)} queued, {stats.get('in_flight', 0)} in flight"
        rate = _rate(now, before, "sent")
    else:
        where = f"-> {st.get('target', '?')}"
        files = f"{_counter(now, 'stored'):,} stored"
        waiting = f"{stats.get('unfinished', 0)} unfinished, {stats.get('commit_backlog', 0)} to commit"
        rate = _rate(now, before, "stored")
    problems = _counter(now, "failed", "refused", "lost", "malformed", "unconfirmed")
    errors = st.get("errors") or []
    shown_problems = f"[red]{problems}[/red]" if problems else "0"
    if errors:
        shown_problems += f" ({str(errors[-1])[:60]})"
    uptime = float(st.get("uptime_s", 0))
    return [now.url, role, st.get("state", "?"), f"{uptime // 3600:.0f}h{uptime % 3600 // 60:02.0f}m", where,
            files, f"{_counter(now, 'bytes') / 2**20:,.1f} MiB" + (f" ({rate})" if rate else ""), waiting,
            shown_problems]


def render(instances: Sequence[Instance], before: dict[str, Instance] | None = None) -> Table:
    table = Table(title="HiDRA", expand=False)
    for column in ("instance", "role", "state", "up", "moves", "files", "data", "waiting", "problems"):
        table.add_column(column, overflow="fold")
    for instance in instances:
        table.add_row(*_row(instance, (before or {}).get(instance.url)))
    return table


def run(urls: Sequence[str], token: str | None, watch: float | None, count: int | None,
        console: Console | None = None) -> int:
    """Print the table once (exit 1 if an instance could not be asked), or refresh it every ``watch`` s."""
    out = console or Console()
    instances = [fetch(url, token) for url in urls]
    if watch is None:
        out.print(render(instances))
        return 1 if any(i.error for i in instances) else 0
    shown = 1
    with Live(render(instances), console=out, auto_refresh=False) as live:
        while count is None or shown < count:
            time.sleep(watch)
            before = {i.url: i for i in instances}
            instances = [fetch(url, token) for url in urls]
            live.update(render(instances, before), refresh=True)
            shown += 1
    return 0
