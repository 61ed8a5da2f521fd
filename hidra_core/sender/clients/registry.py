"""Client registrations (hidra4-protocol.md §3.5, §4, §5): target sets, round-robin and open requests.

Pure bookkeeping, no sockets: the signal handler changes it, the sender's router asks it who gets a file.
Socket ids are canonical ``"fqdn:port"`` strings (see ``hosts.HostResolver``).
"""
from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import re2

__all__ = ["MAX_PATTERN_LENGTH", "Member", "Registry", "TargetSet", "compile_pattern", "suffixes_to_pattern"]

DATA, METADATA = "data", "metadata"
MAX_PATTERN_LENGTH = 1000
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is logged once, by the signal handler, not on stderr


def suffixes_to_pattern(suffixes: list[str]) -> str:
    """Clients of 3.1.2 and older send suffixes: ``[".cbf", ".tif"]`` -> ``.*(.cbf|.tif)$``, ``[""]`` -> ``.*``."""
    if not suffixes or suffixes == [""]:
        return ".*"
    return ".*(" + "|".join(suffixes) + ")$"


def compile_pattern(text: str) -> Any:
    """A client's pattern compiled for linear-time matching (RE2), with ``re.match`` semantics.

    NOTE: client patterns are matched in the sender's router loop, where Python's backtracking ``re`` let a
    pattern like ``(.*)*Z`` take seconds per file name. ValueError names why a pattern is refused: too long,
    or not RE2 syntax (backreferences, lookaround, possessive or atomic groups).
    """
    if len(text) > MAX_PATTERN_LENGTH:
        raise ValueError(f"{len(text)} characters, more than {MAX_PATTERN_LENGTH}")
    try:
        return re2.compile(_python_anchors(text), _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise ValueError(f"not accepted by the linear-time matcher (RE2 syntax, no backreferences or lookaround):"
                         f" {reason}") from None


def _python_anchors(text: str) -> str:
    """Python's end-of-text ``\\Z`` is RE2's ``\\z``; every other escape (``\\\\Z`` too) is left as it is."""
    return re.sub(r"\\(.)", lambda m: r"\z" if m.group(1) == "Z" else m.group(0), text, flags=re.DOTALL)


@dataclass(frozen=True)
class Member:
    socket_id: str
    prio: int
    pattern: Any  # compile_pattern()'s result
    delivery: str  # DATA or METADATA

    def matches(self, basename: str) -> bool:
        try:
            return self.pattern.match(basename) is not None
        except UnicodeEncodeError:  # a name that is not valid text: each undecodable byte counts as one character
            text = basename.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return self.pattern.match(text) is not None


@dataclass
class TargetSet:
    appid: str
    members: list[Member]  # sorted by socket id: round-robin follows the sorted ids
    registered: float = field(default_factory=time.monotonic)
    pointer: int = 0
    requests: deque[Member] = field(default_factory=deque)
    last_request: float = field(default_factory=time.monotonic)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(m.socket_id for m in self.members)


class Registry:
    """One of the two registries: ``streams`` (round-robin) or ``queries`` (open requests)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sets: list[TargetSet] = []

    def start(self, appid: str, members: Iterable[Member]) -> TargetSet:
        new = TargetSet(appid, sorted(members, key=lambda m: m.socket_id))
        ids = new.ids
        # A subset or superset of an existing set of the same app replaces it (pointer/requests reset).
        self.sets = [s for s in self.sets if not (s.appid == appid and (ids <= s.ids or ids >= s.ids))]
        self.sets.append(new)
        return new

    def stop(self, ids: Iterable[str], appid: str | None) -> set[str]:
        """Remove ``ids`` from every set (of ``appid``, or of any app for FORCE_STOP); the ids removed."""
        wanted = set(ids)
        removed: set[str] = set()
        for s in self.sets:
            if appid is not None and s.appid != appid:
                continue
            keep = [m for m in s.members if m.socket_id not in wanted]
            removed |= {m.socket_id for m in s.members} - {m.socket_id for m in keep}
            if len(keep) != len(s.members):
                s.members = keep
                s.pointer = 0
                s.requests = deque(r for r in s.requests if r.socket_id not in wanted)
        self.sets = [s for s in self.sets if s.members]
        return removed

    def next(self, socket_id: str) -> bool:
        """A NEXT: queue a request on the newest set holding the id; older sets holding it are stale."""
        holding = [s for s in self.sets if socket_id in s.ids]
        if not holding:
            return False
        newest = max(holding, key=lambda s: s.registered)
        self.sets = [s for s in self.sets if s is newest or socket_id not in s.ids]
        newest.requests.append(next(m for m in newest.members if m.socket_id == socket_id))
        newest.last_request = time.monotonic()
        return True

    def cancel(self, socket_id: str) -> None:
        for s in self.sets:
            s.requests = deque(r for r in s.requests if r.socket_id != socket_id)

    def ids(self) -> set[str]:
        return {m.socket_id for s in self.sets for m in s.members}

    def pick_stream(self, s: TargetSet, basename: str, available: Callable[[Member], bool]) -> Member | None:
        """§5.2 with D7: the first available member from the pointer; if its pattern fails, skip the set."""
        n = len(s.members)
        for k in range(n):
            member = s.members[(s.pointer + k) % n]
            if not available(member):
                continue
            if not member.matches(basename):
                return None
            s.pointer = (s.pointer + k + 1) % n
            return member
        return None

    @staticmethod
    def pick_query(s: TargetSet, basename: str, available: Callable[[Member], bool]) -> Member | None:
        """§5.3: the head request gets the file if its pattern matches and its target can take it."""
        if s.requests and s.requests[0].matches(basename) and available(s.requests[0]):
            return s.requests.popleft()
        return None

    def expire_idle_queries(self, now: float, ttl: float, connected: Callable[[str], bool]) -> list[str]:
        """Query sets with no connected member and no NEXT for ``ttl`` seconds; returns the ids dropped."""
        dropped: list[str] = []
        for s in list(self.sets):
            if now - s.last_request > ttl and not any(connected(i) for i in s.ids):
                self.sets.remove(s)
                dropped += sorted(s.ids)
        return dropped
