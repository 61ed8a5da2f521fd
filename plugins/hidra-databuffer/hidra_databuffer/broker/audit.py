"""The audit trail (databuffer.md §5): one line per writing request, appended before the request is sent.

Line = ``[`` + local time ``%Y%m%d-%H%M%S`` + ``] `` + the request as JSON; readers take the time at ``line[1:16]``
and the JSON at ``line[18:]``, so nothing may ever be added to the line.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["AuditTrail", "format_line", "parse_line"]


def format_line(request: dict[str, Any], when: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"[{stamp}] {json.dumps(request)}"


def parse_line(line: str) -> tuple[str, dict[str, Any]]:
    """(time text, request) of an audit line or a ``.err`` file's content."""
    if len(line) < 19 or line[0] != "[" or line[16:18] != "] ":
        raise ValueError(f"not an audit line: {line[:40]!r}")
    request = json.loads(line[18:])
    if not isinstance(request, dict):
        raise ValueError(f"audit line holds {type(request).__name__}, not a request object")
    return line[1:16], request


class AuditTrail:
    """Appends lines durably (fsync): the audit trail is the only record of a request whose writer died."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "a", encoding="utf-8"):  # NOTE: refuse to start now rather than fail every stop later
            pass

    def write(self, request: dict[str, Any]) -> None:
        """Append the request's line; raises OSError, and then the request must not be sent (F5)."""
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(format_line(request) + "\n")
            out.flush()
            os.fsync(out.fileno())
