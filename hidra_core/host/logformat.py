"""How the processes log: text lines, lines journald understands, or one JSON object per line.

``text`` is the default on a terminal. Under systemd, whose journal adds its own time stamp, a text line starts
with its syslog priority (``<6>``), so ``journalctl -p warning`` works. ``json`` (``--log-format json``) writes
one object per line (``ts``, ``level``, ``logger``, ``message``, and ``file_id`` and ``state`` on the lines that
record a file's state change), and turns on those per-file lines of the sender (``hidra_core.sender.files``).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import IO

__all__ = ["FORMATS", "SENDER_FILES_LOGGER", "configure", "file_event"]

FORMATS = ("text", "json")
SENDER_FILES_LOGGER = "hidra_core.sender.files"
_TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def file_event(file_id: str, state: str) -> dict[str, str]:
    """``extra=`` of a log line that records a file's state change."""
    return {"file_id": file_id, "state": state}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in ("file_id", "state"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>" + super().format(record).replace("\n", "\n  ")


def _journal(stream: IO[str]) -> bool:
    """Whether ``stream`` is the journal's (systemd sets ``JOURNAL_STREAM`` to its device:inode)."""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return wanted == f"{st.st_dev}:{st.st_ino}"


def configure(level: str, fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Set up the process's logging, as ``logging.basicConfig`` does: only where nobody did it before (an
    embedding application, or pytest, keeps its own handlers; only the level is set then)."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level))
    # NOTE: a line per file and state is what JSON logs are for; as text it would only add noise
    logging.getLogger(SENDER_FILES_LOGGER).setLevel(logging.INFO if fmt == "json" else logging.WARNING)
    if root.handlers:
        return
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif _journal(out):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    root.addHandler(handler)
