"""The report of storage_path.py: the median of repeated runs, and the table with its ratios."""
from __future__ import annotations

import dataclasses

from _harness import MiB, Result


def median_run(runs: list[Result], max_other: float) -> Result:
    """The run with the median MiB/s (latency: median p50) among the undisturbed ones; the highest RSS of all."""
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        return runs[-1]
    quiet = [r for r in ok if r.other_cpu is None or r.other_cpu <= max_other] or ok
    latency = ok[0].p50_ms is not None
    quiet.sort(key=lambda r: r.p50_ms if latency else -(r.mib_s or 0))
    out = dataclasses.replace(quiet[(len(quiet) - 1) // 2], notes=list(quiet[(len(quiet) - 1) // 2].notes))
    out.rss = tuple(max((x for x in col if x is not None), default=None) for col in zip(*(r.rss for r in ok)))
    if len(quiet) > 1 and not latency:
        out.spread = (min(r.mib_s or 0 for r in quiet), max(r.mib_s or 0 for r in quiet))
    elif len(quiet) > 1:
        out.notes.append("p50 over runs " + "/".join(f"{r.p50_ms:.1f}" for r in quiet))
    if len(quiet) < len(ok):
        out.notes.append(f"{len(ok) - len(quiet)} disturbed run{'s' if len(ok) - len(quiet) > 1 else ''} left out")
    elif out.other_cpu is not None and out.other_cpu > max_other:
        out.notes.append("every run disturbed")
    failed = [r for r in runs if r.status != "ok"]
    if failed:
        out.notes.append(f"{len(failed)} of {len(runs)} runs {failed[0].status}")
    return out


COLUMNS = ["set", "mode", "files/s", "MiB/s", "MiB/s min-max", "p50/p99 ms", "peak RSS snd/rcv MiB",
           "CPU% snd/rcv", "other CPU%", "x cp+sync", "x raw zmq", "status"]


def num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def rows(results: list[Result], scale: bool = False) -> list[list[str]]:
    """One row per result; ``scale``: with the N column after the set, ratios against the baselines of the same N."""
    table = []
    for r in results:
        ref = {x.mode: x.mib_s for x in results if x.set == r.set and x.n == r.n and x.status == "ok"}
        ratio = [(num(r.mib_s / ref[m], 2) if r.mib_s and ref.get(m) and r.mode != m else "-")
                 for m in ("cp+sync", "raw zmq")]
        spread = "-" if r.spread is None else f"{r.spread[0]:,.0f}-{r.spread[1]:,.0f}"
        lat = "-" if r.p50_ms is None else f"{r.p50_ms:.1f} / {r.p99_ms:.1f}"
        rss = "-" if r.rss == (None, None) else " / ".join(num(x and x / MiB) for x in r.rss)
        cpu = "-" if r.cpu == (None, None) else " / ".join(num(x) for x in r.cpu)
        table.append([r.set, *([str(r.n)] if scale else []), r.mode, num(r.files_s), num(r.mib_s), spread, lat, rss,
                      cpu, num(r.other_cpu), *ratio, "; ".join([r.status, *r.notes])])
    return table


def print_table(results: list[Result], markdown: bool, scale: bool = False) -> None:
    """The table of ``results`` (``scale``: with the N column, see rows)."""
    table, columns = rows(results, scale), COLUMNS[:1] + ["N"] * scale + COLUMNS[1:]
    widths = [max(len(x) for x in col) for col in zip(columns, *table)]
    for row in [columns, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    threads = [f"{r.set}{f' N={r.n}' if scale else ''} {r.mode}: {r.threads}" for r in results if r.threads]
    if threads:
        group = "; workers = summed over a receiver group's workers" if any("workers " in t for t in threads) else ""
        print("\nCPU per thread of the median run (% of one core; main = router loop / receive loop, py-N = source "
              f"or commit thread{group}):")
        print("\n".join(f"  {line}" for line in threads))
    if markdown:
        print("\n| " + " | ".join(columns) + " |")
        print("|" + "|".join("---" for _ in columns) + "|")
        for row in table:
            print("| " + " | ".join(row) + " |")


def medians(runs: list[Result], max_other: float) -> list[Result]:
    """The median run of each set, N and mode, in the order they first ran."""
    keys = list(dict.fromkeys((r.set, r.n, r.mode) for r in runs))
    return [median_run([r for r in runs if (r.set, r.n, r.mode) == key], max_other) for key in keys]
