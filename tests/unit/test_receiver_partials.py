"""The receiver's unfinished files are bounded per sender and in total, least recently active dropped first."""
from __future__ import annotations

import time

from hidra_core.interfaces import WriteTarget
from hidra_core.receiver.partials import CROWDED_TIMEOUT_S, IDLE_TIMEOUT_S, Partial, Partials


def _partials(per_sender: int, total: int) -> tuple[Partials, list[str]]:
    aborted: list[str] = []
    return Partials(per_sender, total, lambda p: aborted.append(p.target.filename)), aborted


def _add(partials: Partials, sender: str, name: str) -> None:
    partial = Partial(WriteTarget("/t", (), name, {}), [], None, None, sender=sender)
    partials.add(name, partial)


def test_a_flooding_sender_loses_its_own_oldest_files_not_anyone_elses() -> None:
    partials, aborted = _partials(per_sender=3, total=100)
    _add(partials, "real", "real.dat")
    for n in range(10):
        _add(partials, "flood", f"f{n}")
    assert aborted == [f"f{n}" for n in range(7)]
    assert len(partials) == 4 and partials.get("real.dat") is not None and partials.dropped == 7


def test_the_total_bound_drops_the_least_recently_active_file() -> None:
    partials, aborted = _partials(per_sender=10, total=3)
    for name in ("a", "b", "c"):
        _add(partials, name, name)
    partials.touch("a")  # a chunk arrived: "a" is active again
    _add(partials, "d", "d")
    assert aborted == ["b"] and len(partials) == 3


def test_idle_files_expire_sooner_while_at_a_bound() -> None:
    partials, aborted = _partials(per_sender=2, total=100)
    for name in ("a", "b"):
        _add(partials, "full", name)
    _add(partials, "other", "c")
    for name in ("a", "b", "c"):
        partials.get(name).touched = time.monotonic() - CROWDED_TIMEOUT_S - 1  # type: ignore[union-attr]
    partials.expire()
    assert aborted == ["a", "b"]  # "c"'s sender is far from its bound: it waits the full idle timeout
    partials.get("c").touched = time.monotonic() - IDLE_TIMEOUT_S - 1  # type: ignore[union-attr]
    partials.expire()
    assert aborted == ["a", "b", "c"] and len(partials) == 0
