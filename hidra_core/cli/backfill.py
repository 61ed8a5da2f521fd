"""``hidra backfill DIR``: asks the running sender to send DIR (``POST /backfill``), then follows its progress
(``GET /backfill``) with a progress bar until every file found is stored. The work is the sender's: a CLI that is
interrupted leaves it running, and the same command again joins it, or, once it is over, sends what is missing."""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from hidra_core.cli.status import ask

__all__ = ["run"]

_POLL_S = 0.5
_OVER = ("finished", "stopped", "failed")


def run(url: str, token: str | None, directory: str, progress: bool = True, console: Console | None = None) -> int:
    """0 once every file found below ``directory`` is stored; 1 for problems or a sender that went away, 2 for a
    sender that refused (the reason is printed)."""
    base, path = url.rstrip("/"), os.path.abspath(directory)
    try:
        ask(f"{base}/backfill", token, {"path": path})
    except urllib.error.HTTPError as exc:
        print(f"hidra backfill: {base} refused: HTTP {exc.code}: {_detail(exc)}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError) as exc:
        print(f"hidra backfill: the sender at {base} is unreachable: {getattr(exc, 'reason', exc)} (is it running,"
              " with sender.rest on? --url)", file=sys.stderr)
        return 1
    report = _follow(base, token, path, progress, console or Console(stderr=True))
    return _summary(report, path)


def _follow(base: str, token: str | None, path: str, progress: bool, console: Console) -> dict[str, Any] | None:
    """Poll ``GET /backfill`` until the backfill is over; the last report, None if the sender went away."""
    columns = (TextColumn("[bold]backfill"), BarColumn(), TextColumn("{task.fields[files]}"), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("backfill", total=None, files="")
        while True:
            try:
                report: dict[str, Any] = ask(f"{base}/backfill", token)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                print(f"hidra backfill: lost the sender at {base}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
                return None
            _show(bar, task, report)
            if report.get("path") != path or report.get("state") in _OVER:
                return report
            time.sleep(_POLL_S)


def _show(bar: Progress, task: TaskID, report: dict[str, Any]) -> None:
    """Bytes to send (found, less those stored before) against bytes stored or given up: the rate and the ETA
    are those of the transfer, not of the walk."""
    found, already, stored, problems = (report[k] for k in ("found", "already", "stored", "problems"))
    files = f"{already['files'] + stored['files']:,}/{found['files']:,} files"
    if report["state"] == "scanning":
        files += ", scanning"
    if problems["files"]:
        files += f", [red]{problems['files']:,} problems[/red]"
    bar.update(task, total=found["bytes"] - already["bytes"], completed=stored["bytes"] + problems["bytes"],
               files=files)


def _summary(report: dict[str, Any] | None, path: str) -> int:
    if report is None:
        print("hidra backfill: run the same command again once the sender runs: it sends only what is missing",
              file=sys.stderr)
        return 1
    if report.get("path") != path:
        print(f"hidra backfill: the sender no longer backfills {path} (it restarted, or started another one);"
              " run the same command again: it sends only what is missing", file=sys.stderr)
        return 1
    found, already, stored, problems = (report[k] for k in ("found", "already", "stored", "problems"))
    print(f"backfill of {path}: {report['state']}: {found['files']:,} files ({found['bytes']:,} bytes) found,"
          f" {already['files']:,} stored before, {stored['files']:,} sent and stored, {problems['files']:,} problems")
    if report["state"] == "failed":
        print(f"hidra backfill: the sender's backfill failed: {report.get('error')}", file=sys.stderr)
    elif report["state"] == "stopped":
        print("hidra backfill: the sender stopped first; run the same command again once it runs", file=sys.stderr)
    for line in report.get("recent_problems", []):
        print(f"  not sent: {line}", file=sys.stderr)
    if problems["files"]:
        print("hidra backfill: some files could not be sent; `hidra ledger` lists them with the reason",
              file=sys.stderr)
    return 0 if report["state"] == "finished" and not problems["files"] else 1


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["detail"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason or ""
