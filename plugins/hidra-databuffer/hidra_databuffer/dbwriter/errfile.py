"""The audit-line format of databuffer.md §5, shared by ``.err`` files (§7) and replay.

A line is ``[`` + local time ``%Y%m%d-%H%M%S`` + ``] `` + the request as JSON; readers take ``line[18:]``.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from hidra_databuffer.dbwriter.request import RequestError, WriteRequest

__all__ = ["LINE_RE", "err_path", "format_line", "parse_line", "read_requests", "write_err"]

LINE_RE = re.compile(r"^\[\d{8}-\d{6}\] \{")


def format_line(request: WriteRequest, when: float | None = None) -> str:
    """One audit line without its newline; never add fields to it (readers depend on the offsets)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"[{stamp}] {json.dumps(request.record())}"


def parse_line(line: str) -> WriteRequest:
    """The request of one audit or ``.err`` line; ``RequestError`` says what is wrong with it."""
    if not LINE_RE.match(line):
        raise RequestError(f"not an audit line (expected '[YYYYMMDD-HHMMSS] {{...'): {line[:40]!r}")
    try:
        record = json.loads(line[18:])
    except ValueError as exc:
        raise RequestError(f"audit line holds no JSON after column 18: {exc}") from None
    return WriteRequest.from_record(record)


def err_path(output_file: str) -> str:
    return output_file + ".err"


def write_err(request: WriteRequest) -> str:
    """Write ``<output_file>.err``: exactly one line, no trailing newline (§7); returns its path."""
    path = err_path(request.output_file)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(format_line(request))
    return path


def read_requests(path: Path) -> list[tuple[int, WriteRequest]]:
    """Every non-blank line of an audit or ``.err`` file as (1-based line number, request)."""
    found: list[tuple[int, WriteRequest]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                found.append((number, parse_line(text)))
            except RequestError as exc:
                raise RequestError(f"{path}:{number}: {exc}") from None
    return found
